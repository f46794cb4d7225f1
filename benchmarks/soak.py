"""Soak `cserve serve`: many clients sending random completions and chat requests (random prompt
and output lengths, streamed or not, some n=2, stop strings, logprobs), a third of the streams
closed mid-way, for --duration seconds after a --warmup. Prints requests done / cut / failed,
tokens, the server's RSS when ready, after the warm-up and at the end, and the growth per minute
after the warm-up; exits 1 on any failed request, counters or /load not back to 0, a dead
server, or RSS growth over --max-rss-growth-mib. The same driver (tests/helpers/soak.py) runs
for under a minute in tests/entrypoints/openai/test_soak.py.

    python benchmarks/soak.py [--model DIR] [--duration 180] [--warmup 15] [--clients 24]
                              [--cut-fraction 0.333] [--seed 0] [-- extra cserve serve flags]

--model defaults to the tests' tiny chat model (a random Llama with a ChatML template), built
into a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.server import ServerProcess, build_chat_model  # noqa: E402
from tests.helpers.soak import soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory or file (default: the tests' tiny chat model)")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load after the warm-up")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of the same load before the first RSS")
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--cut-fraction", type=float, default=1 / 3, help="share of the streams closed mid-way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-prompt-words", type=int, default=120)
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens is uniform in [1, this]")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-rss-growth-mib", type=float, default=64.0,
                    help="fail when RSS grows more than this after the warm-up")
    ap.add_argument("server_args", nargs="*", help="after --: extra `cserve serve` flags")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_chat_model(Path(tmp) / "tiny_chat", generation_config={"temperature": 0.7}))
        server = ServerProcess(model, "--max-model-len", str(args.max_model_len), "--enable-server-load-tracking",
                               "--disable-uvicorn-access-log", *args.server_args, log_dir=Path(tmp))
        try:
            server.wait_ready(timeout=300)
            report = soak(server, args.warmup, args.duration, rss_every=max(10.0, args.duration / 12),
                          clients=args.clients, cut_fraction=args.cut_fraction, seed=args.seed,
                          max_prompt_words=args.max_prompt_words, max_tokens=args.max_tokens)
        finally:
            rc = server.stop()
        print(f"cserve serve {model}: {args.clients} clients, cut fraction {args.cut_fraction:.3f}, "
              f"warm-up {args.warmup:.0f} s, seed {args.seed}")
        print(report.table())
        total = report.total
        problems = list(report.problems) + total.failures
        if total.failed:
            problems.insert(0, f"{total.failed} failed requests")
        growth = report.rss_end - report.rss_warm
        if not growth <= args.max_rss_growth_mib:  # NaN (a dead server) fails too
            problems.append(f"RSS grew {growth:.1f} MiB after the warm-up (bound {args.max_rss_growth_mib:.0f})")
        if rc != 0:
            problems.append(f"cserve serve exited with {rc} on SIGTERM")
        if problems:
            print("FAILED:\n  " + "\n  ".join(problems))
            print("server log tail:\n" + server.log()[-3000:])
            return 1
        print("OK")
        return 0


if __name__ == "__main__":
    sys.exit(main())
