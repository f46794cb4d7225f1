"""`cserve bench sweep`: `cserve bench serve` at several --max-concurrency levels against one
server, with the same prompts at every level; prints each level's vLLM block, then one table,
and with --plot writes PNG charts (throughput against latency, latency distributions).

    cserve bench sweep --model MODEL --concurrency-levels 1,4,16 --num-prompts 64 --plot --result-dir out/
"""

from __future__ import annotations

import argparse
import asyncio
import os


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--concurrency-levels", default="1,2,4,8,16",
                   help="comma-separated --max-concurrency values, one benchmark each")
    g.add_argument("--plot", action="store_true",
                   help="write sweep_throughput_latency.png and sweep_latency_distributions.png into --result-dir "
                        "(default: the current directory)")


def concurrency_levels(args) -> list[int]:
    try:
        levels = [int(v) for v in args.concurrency_levels.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--concurrency-levels {args.concurrency_levels}: comma-separated integers") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency-levels {args.concurrency_levels}: one or more integers >= 1")
    return levels


def table_lines(results: list[dict], percentile: float) -> list[str]:
    """A markdown table, one row per level: throughput, and latency means and the pNN."""
    from cserve.bench.metrics import metric_stats, percentile_name

    p = percentile_name(percentile)
    header = ["concurrency", "completed", "duration (s)", "req/s", "output tok/s", "total tok/s",
              "mean TTFT (ms)", f"P{p} TTFT (ms)", "mean TPOT (ms)", f"P{p} TPOT (ms)", "mean ITL (ms)",
              "mean E2EL (ms)", f"P{p} E2EL (ms)"]
    lines = [f"{' Sweep: max concurrency ':=^50}", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in results:
        s = {}
        for name in ("ttft", "tpot", "itl", "e2el"):
            s.update(metric_stats(name, r["_samples"][name], [percentile]))
        cells = [str(r["max_concurrency"]), str(r["completed"]), f"{r['duration']:.2f}",
                 f"{r['request_throughput']:.2f}", f"{r['output_throughput']:.2f}",
                 f"{r['total_token_throughput']:.2f}", f"{s['mean_ttft_ms']:.2f}", f"{s[f'p{p}_ttft_ms']:.2f}",
                 f"{s['mean_tpot_ms']:.2f}", f"{s[f'p{p}_tpot_ms']:.2f}", f"{s['mean_itl_ms']:.2f}",
                 f"{s['mean_e2el_ms']:.2f}", f"{s[f'p{p}_e2el_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


async def _sweep(args, levels: list[int]) -> list[dict]:
    from cserve.bench.report import save_result
    from cserve.bench.serve import benchmark, check_server, public, setup, warm_up

    run = await setup(args)
    results = []
    try:
        await check_server(run)
        for level in levels:
            await warm_up(run, level)
            result = await benchmark(run, level, id_prefix=f"c{level}-")
            if args.save_result or args.append_result:
                print(f"Result saved to {save_result(args, public(result))}")
            results.append(result)
    finally:
        await run.backend.close()
    return results


def main(args) -> int:
    from cserve.bench.serve_args import metric_percentiles

    levels = concurrency_levels(args)
    if args.result_filename and len(levels) > 1 and not args.append_result:
        raise ValueError("--result-filename names one file: with several levels add --append-result, "
                         "or leave the name to vLLM's pattern (one file per level)")
    results = asyncio.run(_sweep(args, levels))
    print("\n".join(table_lines(results, (metric_percentiles(args) or [99.0])[-1])))
    if args.plot:
        from cserve.bench.plots import write_sweep_plots

        for path in write_sweep_plots(results, args.result_dir or os.curdir):
            print(f"Plot saved to {path}")
    return 0 if all(r["completed"] for r in results) else 1
