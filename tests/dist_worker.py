"""Launched by tests/test_distributed.py under `torchrun --nproc_per_node=2`: a few GRPO steps on 2 CPU ranks
(gloo, FSDP2, one vLLM engine per rank), then every rank's engine samples the same prompt with the same seed and
writes its tokens and logprobs to OUT_DIR/rank{r}.json, so the test can see that all engines serve the new weights.

    torchrun --nproc_per_node=2 tests/dist_worker.py MODEL_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpo  # noqa: E402
from rollout import Engine  # noqa: E402
from test_grpo_loop import char_fraction_z, tiny_config, tiny_prompts  # noqa: E402

if __name__ == "__main__":
    model, out_dir = sys.argv[1], sys.argv[2]
    rank, world, _ = grpo.init_distributed()
    engine = Engine(model, dtype="float32", max_model_len=1024, seed=0, distributed=True)
    prompts = tiny_prompts(model)
    grpo.train(tiny_config(model, out_dir, steps=2), prompts, char_fraction_z, engine=engine)
    sample = engine.generate([prompts[0].prompt_ids], n=4, temperature=1.0, max_tokens=8, seeds=[12345])[0]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps([dict(prompt_ids=s.prompt_ids, completion_ids=s.completion_ids,
                                                                  logprobs=s.logprobs) for s in sample]))
    grpo.dist.barrier()
