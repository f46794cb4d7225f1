"""One tensor-parallel rank (1..N-1): `python -m cserve.engine.tensor_parallel_worker RANK
[--cores LIST]`, the engine's config as JSON on stdin. Runs until the engine stops; exits 1
with the reason when rank 0 goes silent or loading fails."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rank", type=int)
    ap.add_argument("--cores", default="")
    a = ap.parse_args()
    if a.cores:
        os.sched_setaffinity(0, [int(c) for c in a.cores.split(",")])
    from cserve import _core

    config = _core.EngineConfig()
    for name, value in json.loads(sys.stdin.read()).items():
        setattr(config, name, value)
    try:
        _core.run_tensor_parallel_rank(config, a.rank)
    except Exception as e:  # noqa: BLE001 - the reason goes to the log, the status to the engine
        print(f"cserve tensor-parallel rank {a.rank}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
