"""One tensor-parallel rank (1..N-1): `python -m cserve.engine.tensor_parallel_worker RANK
[--cores LIST]`, the engine's config as JSON on stdin. Runs until the engine stops; exits 1
with the reason when rank 0 goes silent or loading fails."""

from __future__ import annotations

import argparse
import sys


def run(rank: int, config) -> int:
    """The rank's work, in this process (a rank process, or a Ray actor): its exit status."""
    from cserve import _core

    try:
        _core.run_tensor_parallel_rank(config, rank)
    except Exception as e:  # noqa: BLE001 - the reason goes to the log, the status to the engine
        print(f"cserve tensor-parallel rank {rank}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rank", type=int)
    ap.add_argument("--cores", default="")
    a = ap.parse_args()
    from cserve.engine.tensor_parallel import child_config

    return run(a.rank, child_config(a.cores))


if __name__ == "__main__":
    sys.exit(main())
