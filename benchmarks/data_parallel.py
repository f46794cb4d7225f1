"""Data parallelism under load: `cserve serve -dp 1` and `-dp 2` on the same model, each driven by
`cserve bench serve` (random prompts, 100 tokens in, 64 out, ignore_eos) at 16 and at 64 requests
in flight. Prints output tok/s, median TTFT and median TPOT per layout and concurrency.

    python benchmarks/data_parallel.py [--model DIR] [--sizes 1,2] [--concurrency 16,64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.server import ServerProcess  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache/cserve-tests/smollm2-135m-instruct-f32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--sizes", default="1,2")
    ap.add_argument("--concurrency", default="16,64")
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="cserve-dp-bench-"))
    print("| -dp | concurrent | output tok/s | median TTFT ms | median TPOT ms |")
    print("|---|---|---|---|---|")
    for dp in (int(v) for v in a.sizes.split(",")):
        with ServerProcess(str(a.model), "--served-model-name", "m", "--max-model-len", "1024", "-dp", str(dp),
                           env={"CSERVE_NUM_THREADS": "0"}) as server:
            server.wait_ready(timeout=300)
            for conc in (int(v) for v in a.concurrency.split(",")):
                name = f"dp{dp}-c{conc}.json"
                subprocess.run([sys.executable, "-m", "cserve.cli.main", "bench", "serve", "--base-url",
                                server.base_url, "--model", str(a.model), "--served-model-name", "m",
                                "--dataset-name", "random", "--random-input-len", "100", "--random-output-len", "64",
                                "--num-prompts", str(4 * conc), "--max-concurrency", str(conc), "--ignore-eos",
                                "--num-warmups", "4", "--save-result", "--result-dir", str(out),
                                "--result-filename", name], check=True, stdout=subprocess.DEVNULL)
                r = json.loads((out / name).read_text())
                print(f"| {dp} | {conc} | {r['output_throughput']:.1f} | {r['median_ttft_ms']:.0f} | "
                      f"{r['median_tpot_ms']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
