"""`cserve serve` on SmolLM2-135M (bf16 by default): seconds from process start until /health
answers, resident memory then and after load, and output tokens/s over HTTP for 1 stream and for
16 concurrent requests (100 prompt tokens in, 64 out), through the official openai client.

    python benchmarks/serve.py [--runs 3] [-- extra cserve serve flags]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.server import ServerProcess  # noqa: E402
from tests.helpers.smollm2 import smollm2_dir  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def throughput(base_url: str, concurrency: int, prompt_len: int, out_len: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=600)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(prompt_len)] for _ in range(concurrency)]

    async def one(p):
        r = await client.completions.create(model="smol", prompt=p, max_tokens=out_len, temperature=0,
                                            extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    elapsed = time.perf_counter() - start
    await client.close()
    return tokens / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="engine threads (CSERVE_NUM_THREADS; 0: every core)")
    ap.add_argument("extra", nargs="*", help="extra `cserve serve` flags (after --)")
    opts = ap.parse_args()
    model = str(smollm2_dir())
    ready, rss_ready, peaks, single, multi = [], [], [], [], []
    for _ in range(opts.runs):
        proc = ServerProcess(model, "--served-model-name", "smol", "--disable-uvicorn-access-log", *opts.extra,
                             env={"CSERVE_NUM_THREADS": str(opts.threads)})
        try:
            ready.append(proc.wait_ready(timeout=120))
            rss_ready.append(rss_mb(proc.proc.pid)[0])
            asyncio.run(throughput(proc.base_url, 1, 16, 8))  # first-request warm-up
            single.append(asyncio.run(throughput(proc.base_url, 1, 100, 128)))
            multi.append(asyncio.run(throughput(proc.base_url, 16, 100, 64)))
            peaks.append(rss_mb(proc.proc.pid)[1])
        finally:
            proc.stop()
    med = statistics.median
    print(f"ready after      : median {med(ready):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in ready)})")
    print(f"RSS when ready   : median {med(rss_ready):.0f} MB")
    print(f"peak RSS         : median {med(peaks):.0f} MB (after the load below)")
    print(f"1 stream         : median {med(single):.1f} output tok/s (100 in / 128 out)")
    print(f"16 concurrent    : median {med(multi):.1f} output tok/s (100 in / 64 out)")


if __name__ == "__main__":
    main()
