"""Where a benchmark ran: the CPU, the _core build, the CPU time other processes took during
the run and the memory bandwidth of the moment. On a shared VM the last two move the figures
(decode speed follows bandwidth), so the offline benchmarks print them with every result."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional


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
    return (f"{mi.architecture} {mi.dtype} on {mi.backend}: {mi.weight_bytes / 2**20:.1f} MiB weights, "
            f"KV cache {mi.kv_cache_tokens} tokens ({mi.kv_cache_bytes / 2**20:.0f} MiB); build {build_id()}")


def build_id() -> str:
    """Which _core the run used: resolved path, modification time, first 12 hex of its sha256."""
    import hashlib

    from cserve import _core

    path = Path(_core.__file__).resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    return f"{path} ({stamp}, sha256 {digest})"


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
