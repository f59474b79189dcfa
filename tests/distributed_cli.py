"""What the processes of the distributed tests run: ``fasb-lens`` with the tests' short
calibration searches and, for the kill-and-resume tests, a kill switch.

``torchrun ... tests/distributed_cli.py reproduce ...`` (or ``python
tests/distributed_cli.py ...`` for one process). ``FASB_LENS_TEST_GRIDS`` (JSON: policy ->
strengths) shortens the searches as the ``small_searches`` fixture does in-process;
``FASB_LENS_TEST_KILL=RANK:COUNT`` kills process RANK with SIGKILL right after its
COUNT-th appended record, as a crash or an out-of-memory kill would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _small_searches  # noqa: E402

from fasb_lens import cli, distributed  # noqa: E402
from fasb_lens.storage import JsonlLog  # noqa: E402


def kill_after(count: int, rank: int) -> None:
    """Kill process ``rank`` after its ``count``-th record (counted across its logs)."""
    real = JsonlLog.append
    seen = {"n": 0}

    def append(self: JsonlLog, record: dict) -> None:
        real(self, record)
        if distributed.global_rank() == rank:
            seen["n"] += 1
            if seen["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)

    JsonlLog.append = append  # type: ignore[method-assign]


def main() -> int:
    grids = json.loads(os.environ.get("FASB_LENS_TEST_GRIDS", "{}"))
    kill = os.environ.get("FASB_LENS_TEST_KILL")
    if kill:
        rank, count = (int(part) for part in kill.split(":"))
        kill_after(count, rank)
    with _small_searches({name: tuple(grid) for name, grid in grids.items()}, quantiles=(0.5,)):
        return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
