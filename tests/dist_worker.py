"""Launched by tests/test_distributed.py under `torchrun --nproc_per_node=2` (or plain `python`, one process): a few
GRPO steps (gloo, FSDP2, one vLLM engine per rank), then every rank's engine samples the same prompt with the same seed
and writes its tokens and logprobs to OUT_DIR/rank{r}.json, so the test can see that all engines serve the new weights.
Each rank also writes the id of the prompt of every reward call to OUT_DIR/prompts-rank{r}.txt (its share of each step).

    torchrun --nproc_per_node=2 tests/dist_worker.py MODEL_DIR OUT_DIR ['{"dtype": "bfloat16", ...}']

The optional JSON object overrides fields of the tests' tiny config (`test_grpo_loop.tiny_config`).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpo  # noqa: E402
from common import init_distributed  # noqa: E402
from rollout import make_engine  # noqa: E402
from test_grpo_loop import char_fraction_z, tiny_config, tiny_prompts  # noqa: E402

if __name__ == "__main__":
    model, out_dir = sys.argv[1], sys.argv[2]
    overrides = {"steps": 2, **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}")}
    rank, world, _ = init_distributed()
    cfg = tiny_config(model, out_dir, **overrides)
    engine = make_engine(cfg, world, sleep_mode=cfg.sleep_level > 0)
    prompts = tiny_prompts(model)
    seen = Path(out_dir, f"prompts-rank{rank}.txt")  # the prompt of every reward call, in order: each rank's share

    def reward(text, prompt):
        with seen.open("a") as f:
            f.write(prompt.problem.id + "\n")
        return char_fraction_z(text, prompt)

    grpo.train(cfg, prompts, reward, engine=engine)
    sample = engine.generate([prompts[0].prompt_ids], n=4, temperature=1.0, max_tokens=8, seeds=[12345])[0]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps([dict(prompt_ids=s.prompt_ids, completion_ids=s.completion_ids,
                                                                  logprobs=s.logprobs) for s in sample]))
    if world > 1:
        grpo.dist.barrier()
