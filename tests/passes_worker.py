"""Launched by tests/test_distributed.py under `torchrun --nproc_per_node=2`: one grpo.update on FSDP2 where the two
ranks' sequences differ in length, so a token budget packs them into different numbers of passes (rank 0: eight
short sequences, one pass; rank 1: eight long ones, eight passes). Every rank must still run as many forwards as the
others; the script writes OUT_DIR/passes-rank{r}.json with the passes it ran and the step's grad norm.

    torchrun --nproc_per_node=2 tests/passes_worker.py MODEL_DIR OUT_DIR
"""

import json
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import grpo  # noqa: E402
from common import init_distributed  # noqa: E402
from rollout import Sample  # noqa: E402

if __name__ == "__main__":
    model, out_dir = sys.argv[1], Path(sys.argv[2])
    rank, world, device = init_distributed(timeout_minutes=1.0)  # a rank left waiting fails in a minute, not hangs
    cfg = grpo.Config(model=model, micro_batch_size=8, micro_batch_tokens=200, max_new_tokens=150, lr=0.0)
    policy = grpo.load_model(cfg, device, world, trainable=True)
    length = 10 if rank == 0 else 150  # completion tokens: rank 0's 8 fit one pass of 200 tokens, rank 1's need 8
    samples = [Sample([1, 2, 3], [5 + i % 7] * length, [0.0] * length, "", "length") for i in range(8)]
    ro = grpo.rollout_tensors([samples], torch.arange(8.0)[None], None, cfg, device)
    ran = []
    real = grpo.micro_batch_stats

    def counting(*args, **kwargs):
        ran.append(1)
        return real(*args, **kwargs)

    grpo.micro_batch_stats = counting
    sums = grpo.update(policy, None, torch.optim.SGD(policy.parameters(), lr=0.0), ro, cfg, device, nullcontext(), {})
    (out_dir / f"passes-rank{rank}.json").write_text(json.dumps({"passes": len(ran),
                                                                 "grad_norm": float(sums["grad_norm_sum"])}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
