"""`cserve bench` on the command line: help is instant and lists the four commands."""

from __future__ import annotations

import time

from tests.bench.conftest import run_bench
from tests.cli.test_serve_command import run_cli


def test_help_lists_the_commands_quickly():
    start = time.monotonic()
    r = run_bench("--help")
    assert r.returncode == 0 and time.monotonic() - start < 10
    for command in ("serve", "sweep", "throughput", "latency"):
        assert command in r.stdout
    r = run_bench("serve", "--help")
    for flag in ("--backend", "--base-url", "--dataset-name", "--request-rate", "--burstiness", "--max-concurrency",
                 "--goodput", "--save-result", "--percentile-metrics", "--ignore-eos", "--header"):
        assert flag in r.stdout
    assert "bench serve|sweep|throughput|latency" in run_cli("--help").stdout


def test_unknown_command():
    r = run_bench("nothing")
    assert r.returncode == 2 and "invalid choice" in r.stderr
