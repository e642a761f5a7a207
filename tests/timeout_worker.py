"""Launched by tests/test_distributed.py under `torchrun --nproc_per_node=2`: rank 1 sleeps past a short collective
timeout while rank 0 waits for it in a reduction; the job must end with a line that names --dist-timeout-minutes.

    torchrun --nproc_per_node=2 tests/timeout_worker.py TIMEOUT_MINUTES SLEEP_SECONDS
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

if __name__ == "__main__":
    timeout_minutes, sleep_s = float(sys.argv[1]), float(sys.argv[2])
    with common.one_line_errors(timeout_minutes):
        rank, world, device = common.init_distributed(timeout_minutes)
        if rank == 1:
            time.sleep(sleep_s)
        common.reduce_sums({"x": 1.0}, device)
    common.shutdown()
