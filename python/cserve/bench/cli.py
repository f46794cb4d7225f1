"""`cserve bench serve|throughput|latency|sweep`: argparse for the four commands. Parsing imports
nothing heavy (`cserve bench --help` is instant); a command imports its module when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

DESCRIPTION = """benchmarks with the flags and output of `vllm bench`:
  serve       an online benchmark against a running OpenAI-compatible server (or cserve's gRPC API)
  sweep       `serve` at several --max-concurrency levels: a table, and PNG charts with --plot
  throughput  offline throughput of the engine (random token-id prompts)
  latency     offline latency of one batch end to end"""


def make_parser() -> argparse.ArgumentParser:
    from cserve.bench.offline import add_latency_args, add_throughput_args
    from cserve.bench.serve_args import add_serve_args
    from cserve.bench.sweep import add_sweep_args

    parser = argparse.ArgumentParser(prog="cserve bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{serve,sweep,throughput,latency}", required=True)
    add_serve_args(commands.add_parser("serve", help="online benchmark of a running server",
                                       description="`vllm bench serve` against any OpenAI-compatible server"))
    sweep = commands.add_parser("sweep", help="`serve` at several concurrency levels",
                                description="`cserve bench serve` at each of --concurrency-levels")
    add_serve_args(sweep, sweep=True)
    add_sweep_args(sweep)
    add_throughput_args(commands.add_parser("throughput", help="offline throughput",
                                            description="`vllm bench throughput` on cserve's engine"))
    add_latency_args(commands.add_parser("latency", help="offline latency of one batch",
                                         description="`vllm bench latency` on cserve's engine"))
    return parser


def _runner(command: str):
    if command == "serve":
        from cserve.bench.serve import main
    elif command == "sweep":
        from cserve.bench.sweep import main
    elif command == "throughput":
        from cserve.bench.offline import throughput as main
    else:
        from cserve.bench.offline import latency as main
    return main


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from cserve.model_source import ModelSourceError

    try:
        status = _runner(args.command)(args)
    except (ValueError, RuntimeError, FileNotFoundError, NotImplementedError, ModelSourceError) as e:
        print(f"cserve bench {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status if isinstance(status, int) else 0
