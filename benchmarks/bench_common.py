"""Shared pieces of the offline benchmarks: model lookup, engine construction, random prompts.

`--model smollm2` builds (once) and uses SmolLM2-135M-Instruct from tests/helpers/smollm2.py,
cached under ${CSERVE_TEST_CACHE:-~/.cache/cserve-tests}; any other value is a model directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
try:
    import cserve  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT / "python"))


def _load_smollm2_helper():
    path = ROOT / "tests" / "helpers" / "smollm2.py"
    spec = importlib.util.spec_from_file_location("cserve_bench_smollm2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_model(name: str) -> str:
    if name.lower() == "smollm2":
        helper = _load_smollm2_helper()
        return str(helper.smollm2_dir(helper.default_cache_root()))
    if name.lower() == "smollm2-gguf":  # the Q4_1 file the directory above is built from
        helper = _load_smollm2_helper()
        return str(helper.download_gguf(helper.default_cache_root() / "gguf"))
    if not (Path(name).is_dir() or name.lower().endswith(".gguf")):
        raise SystemExit(f"--model {name}: not a directory or .gguf (or 'smollm2', 'smollm2-gguf')")
    return name


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default="smollm2", help="model directory or .gguf, or 'smollm2' (built from PyPI "
                   "once) or 'smollm2-gguf' (its Q4_1 GGUF)")
    g.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--num-threads", type=int, default=0, help="kernel threads (0: the engine's default)")
    g.add_argument("--kv-cache-memory-bytes", type=int, default=1 << 30,
                   help="KV cache size (default 1 GiB; 0: size by gpu_memory_utilization)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=False,
                   help="off by default: random prompts never share blocks, and vLLM's bench sets no cache hits")
    g.add_argument("--seed", type=int, default=0)


def make_llm(args: argparse.Namespace, model_dir: str):
    from cserve import LLM

    options: dict[str, Any] = dict(
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        seed=args.seed,
    )
    if args.kv_cache_memory_bytes:
        options["kv_cache_memory_bytes"] = args.kv_cache_memory_bytes
    return LLM(model_dir, num_threads=args.num_threads, **options)


def start_engine(args: argparse.Namespace):
    """Resolves --model, loads it with the engine flags, and prints the machine and engine lines
    every benchmark report starts with. Returns (llm, model_dir)."""
    model_dir = resolve_model(args.model)
    llm = make_llm(args, model_dir)
    print(f"machine: {machine_line()}")
    print(f"engine: {engine_line(llm)}")
    return llm, model_dir


def random_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int) -> list[dict]:
    """Token-id prompts drawn uniformly, skipping the low ids where special tokens live."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    ids = rng.integers(low, vocab_size, size=(num_prompts, input_len))
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def machine_line() -> str:
    model = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cpus"


def engine_line(llm) -> str:
    mi = llm.model_info
    return (f"{mi.architecture} {mi.dtype}: {mi.weight_bytes / 2**20:.1f} MiB weights, "
            f"KV cache {mi.kv_cache_tokens} tokens ({mi.kv_cache_bytes / 2**20:.0f} MiB); build {build_id()}")


def build_id() -> str:
    """Which _core the run used: resolved path, modification time, first 12 hex of its sha256."""
    import hashlib

    from cserve import _core

    path = Path(_core.__file__).resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    return f"{path} ({stamp}, sha256 {digest})"


def write_json(path: Optional[str], data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


class Contention:
    """CPU time other processes took while a benchmark ran (from /proc/stat and os.times()).

    The benchmarks are meant for an otherwise idle machine; this says when it was not.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> Optional[tuple[float, float, float]]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
        t = os.times()  # children: roofline.py's spawned worker, once reaped
        return busy / ticks, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def report(self) -> str:
        end = self._sample()
        if self._start is None or end is None:
            return "cpu contention: unknown"
        busy = end[0] - self._start[0]
        own = end[1] - self._start[1]
        wall = end[2] - self._start[2]
        cpus = os.cpu_count() or 1
        other = max(0.0, busy - own)
        return (f"cpu: this process {own / wall * 100:.0f}% of one cpu, other processes {other / wall * 100:.0f}% "
                f"of one cpu (of {cpus}) over {wall:.1f} s")


_PROBE = r"""
import sys, time
import numpy as np
threads, mib = int(sys.argv[1]), int(sys.argv[2])
n = mib * 2**20 // 4
try:
    import torch
    torch.set_num_threads(threads)
    a = torch.empty(n, dtype=torch.float32).uniform_()
    op, how = (lambda: a.max()), f"torch max, {threads} threads"
except ImportError:
    a = np.random.default_rng(0).random(n, dtype=np.float32)
    op, how = (lambda: a.max()), "numpy max, 1 thread"
op()
best = min((lambda t: (op(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(f"{n * 4 / best / 1e9:.1f} {how}")
"""


def bandwidth_probe(num_threads: int = 0, mib: int = 256) -> str:
    """Memory read bandwidth right now, measured in a separate process (~1 s).

    On a shared VM it drifts over time (here: ~36 GB/s most of the time, ~60 GB/s at others),
    and decode speed follows it, so each run reports it before and after its timed part.
    """
    import subprocess

    num_threads = num_threads or os.cpu_count() or 1  # 0: the engine's default, every cpu
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(num_threads), str(mib)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    if out.returncode != 0:
        return f"unavailable ({out.stderr.strip().splitlines()[-1:]})"
    gbs, how = out.stdout.strip().split(" ", 1)
    return f"{gbs} GB/s ({how})"
