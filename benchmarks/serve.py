"""`cserve serve` over HTTP: seconds from process start until /health answers, resident memory,
and output tokens/s for 1 stream and for 16 concurrent requests (100 prompt tokens in, 64 out),
through the official openai client. With --llama-server it measures llama.cpp's server on the
same model file in the same run, for a side-by-side table.

    python benchmarks/serve.py [--runs 3] [--model PATH] [--llama-server BIN] [-- extra cserve flags]

--model defaults to the SmolLM2-135M-Instruct directory the tests build (bf16 at load); give the
Q4_1 GGUF (e.g. ~/.cache/cserve-tests/gguf/SmolLM2-135M-Instruct.Q4_1.gguf) to compare with llama.cpp.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.server import ServerProcess, free_port  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class LlamaServer:
    """llama.cpp's llama-server on the same file: 16 slots, greedy requests like cserve's."""

    def __init__(self, binary: str, model: str, threads: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        cmd = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-np", "16", "-c", "8192",
               "-t", str(threads), "--no-webui"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise TimeoutError("llama-server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def throughput(base_url: str, model: str, concurrency: int, prompt_len: int, out_len: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=600)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(prompt_len)] for _ in range(concurrency)]

    async def one(p):
        r = await client.completions.create(model=model, prompt=p, max_tokens=out_len, temperature=0,
                                            extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    elapsed = time.perf_counter() - start
    await client.close()
    return tokens / elapsed


def measure(make_server, runs: int) -> dict:
    ready, rss_ready, peaks, single, e2e, multi = [], [], [], [], [], []
    for _ in range(runs):
        server = make_server()
        try:
            ready.append(server.wait_ready(timeout=120))
            rss_ready.append(rss_mb(server.proc.pid)[0])
            asyncio.run(throughput(server.base_url, "smol", 1, 16, 8))  # first-request warm-up
            single.append(asyncio.run(throughput(server.base_url, "smol", 1, 8, 256)))
            e2e.append(asyncio.run(throughput(server.base_url, "smol", 1, 100, 64)))
            multi.append(asyncio.run(throughput(server.base_url, "smol", 16, 100, 64)))
            peaks.append(rss_mb(server.proc.pid)[1])
        finally:
            server.stop()
    med = statistics.median
    return {"ready after (s)": (med(ready), ready), "RSS when ready (MB)": (med(rss_ready), rss_ready),
            "peak RSS (MB)": (med(peaks), peaks), "1 stream decode, 8 in / 256 out (tok/s)": (med(single), single),
            "1 stream, 100 in / 64 out (output tok/s)": (med(e2e), e2e),
            "16 concurrent, 100 in / 64 out (output tok/s)": (med(multi), multi)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="engine threads (CSERVE_NUM_THREADS; 0: every core)")
    ap.add_argument("--model", default=None, help="a model directory or .gguf (default: the SmolLM2 test dir)")
    ap.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary, run on --model too")
    ap.add_argument("extra", nargs="*", help="extra `cserve serve` flags (after --)")
    opts = ap.parse_args()
    if opts.model is None:
        from tests.helpers.smollm2 import smollm2_dir

        opts.model = str(smollm2_dir())
    results = {"cserve": measure(lambda: ServerProcess(
        opts.model, "--served-model-name", "smol", "--disable-uvicorn-access-log", *opts.extra,
        env={"CSERVE_NUM_THREADS": str(opts.threads)}), opts.runs)}
    if opts.llama_server:
        import os

        threads = opts.threads or os.cpu_count()
        results["llama.cpp"] = measure(lambda: LlamaServer(opts.llama_server, opts.model, threads), opts.runs)
    names = list(results)
    print(f"model: {opts.model}")
    print(f"| figure | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for figure in results[names[0]]:
        cells = []
        for name in names:
            median, values = results[name][figure]
            cells.append(f"{median:.2f} ({', '.join(f'{v:.1f}' for v in values)})")
        print(f"| {figure} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
