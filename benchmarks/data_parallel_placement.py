"""Data-parallel placement on a shared-prefix workload: `cserve serve -dp 2` with each
--data-parallel-load-balance policy, driven by `cserve bench serve --dataset-name
prefix_repetition` (a few long prefixes, each shared by many prompts). Prints, per policy, the
prefix-cache hit rate summed over the replicas (from /metrics), mean/median TTFT and the
throughput, so the gain of sending a prompt where its prefix is cached shows in one run.

    python benchmarks/data_parallel_placement.py [--model DIR] [--num-prompts 64] [--concurrency 8]
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
from tests.helpers.server import ServerProcess, metric  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache/cserve-tests/smollm2-135m-instruct-f32"


def run(policy: str, a: argparse.Namespace, out: Path) -> dict:
    with ServerProcess(str(a.model), "--served-model-name", "m", "--max-model-len", "2048", "-dp", str(a.dp),
                       "--data-parallel-load-balance", policy, env={"CSERVE_NUM_THREADS": "0"}) as server:
        server.wait_ready(timeout=300)
        result = out / f"{policy}.json"
        subprocess.run([sys.executable, "-m", "cserve.cli.main", "bench", "serve", "--base-url", server.base_url,
                        "--model", str(a.model), "--served-model-name", "m", "--dataset-name", "prefix_repetition",
                        "--prefix-repetition-prefix-len", str(a.prefix_len), "--prefix-repetition-suffix-len", "32",
                        "--prefix-repetition-num-prefixes", str(a.num_prefixes),
                        "--prefix-repetition-output-len", "16", "--num-prompts", str(a.num_prompts),
                        "--max-concurrency", str(a.concurrency), "--ignore-eos", "--save-result",
                        "--result-dir", str(out), "--result-filename", result.name],
                       check=True, stdout=subprocess.DEVNULL)
        with server.client() as http:
            queries = metric(http, "vllm:prefix_cache_queries_total")
            hits = metric(http, "vllm:prefix_cache_hits_total")
        r = json.loads(result.read_text())
        return {"hit": hits / queries if queries else 0.0, "ttft_mean": r["mean_ttft_ms"],
                "ttft_median": r["median_ttft_ms"], "req_s": r["request_throughput"],
                "tok_s": r["output_throughput"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prefix-len", type=int, default=768)
    ap.add_argument("--num-prefixes", type=int, default=4)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("least_loaded", "round_robin", "prefix_aware"):
            rows.append((policy, run(policy, a, Path(tmp))))
    print(f"-dp {a.dp}, {a.num_prompts} prompts ({a.num_prefixes} prefixes of {a.prefix_len} tokens + 32), "
          f"16 out, concurrency {a.concurrency}")
    print("| placement | prefix cache hit rate | mean TTFT ms | median TTFT ms | req/s | output tok/s |")
    print("|---|---|---|---|---|---|")
    for policy, r in rows:
        print(f"| {policy} | {100 * r['hit']:.1f}% | {r['ttft_mean']:.0f} | {r['ttft_median']:.0f} | "
              f"{r['req_s']:.2f} | {r['tok_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
