"""PNG charts of a `cserve bench sweep` (matplotlib, imported only here, on the Agg backend so
no display is needed):

- sweep_throughput_latency.png: output tokens/s against TTFT, TPOT and E2EL (median and P99),
  one point per concurrency level, labelled with it: where latency starts to pay for throughput;
- sweep_latency_distributions.png: box plots of TTFT, TPOT, ITL and E2EL per level, from the
  per-request samples.
"""

from __future__ import annotations

import os

_PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values] or [0.0]


def throughput_latency(results: list[dict], path: str) -> str:
    import numpy as np

    plt = _pyplot()
    throughput = [r["output_throughput"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (name, label) in zip(axes, (p for p in _PANELS if p[0] != "itl")):
        for stat, marker in (("median", "o-"), ("P99", "s--")):
            q = 50 if stat == "median" else 99
            ys = [float(np.percentile(_ms(r["_samples"][name]), q)) for r in results]
            ax.plot(throughput, ys, marker, label=f"{stat} {label}")
            if stat == "median":
                for x, y, r in zip(throughput, ys, results):
                    ax.annotate(f"c={r['max_concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{label} (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results[0]['model_id']}: throughput against latency ({results[0]['backend']})")
    return _save(fig, path)


def latency_distributions(results: list[dict], path: str) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    labels = [str(r["max_concurrency"]) for r in results]
    for ax, (name, label) in zip(axes, _PANELS):
        ax.boxplot([_ms(r["_samples"][name]) for r in results], showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_xlabel("max concurrency")
        ax.set_ylabel(f"{label} (ms)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{results[0]['model_id']}: latency per request (ITL: per chunk)")
    return _save(fig, path)


def write_sweep_plots(results: list[dict], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    return [throughput_latency(results, os.path.join(out_dir, "sweep_throughput_latency.png")),
            latency_distributions(results, os.path.join(out_dir, "sweep_latency_distributions.png"))]
