"""One tensor-parallel rank (1..N-1): `python -m cserve.engine.tensor_parallel_worker RANK
[--cores LIST]`, the engine's config as JSON on stdin. Runs until the engine stops; exits 1
with the reason when rank 0 goes silent or loading fails."""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rank", type=int)
    ap.add_argument("--cores", default="")
    a = ap.parse_args()
    from cserve import _core
    from cserve.engine.tensor_parallel import child_config

    config = child_config(a.cores)
    try:
        _core.run_tensor_parallel_rank(config, a.rank)
    except Exception as e:  # noqa: BLE001 - the reason goes to the log, the status to the engine
        print(f"cserve tensor-parallel rank {a.rank}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
