"""`cserve bench throughput` and `cserve bench latency` on the tiny model: vLLM's result lines,
and the JSON they write."""

from __future__ import annotations

import json
import re

from tests.bench.conftest import run_bench

ENGINE = ("--num-threads", "1", "--kv-cache-memory-bytes", "16M", "--no-bandwidth-probe", "--disable-tqdm")


def test_throughput(chat_model_dir, tmp_path):
    out = tmp_path / "t.json"
    r = run_bench("throughput", "--model", chat_model_dir, "--num-prompts", "6", "--input-len", "12",
                  "--output-len", "5", "--output-json", str(out), *ENGINE)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^Throughput: ([\d.]+) requests/s, ([\d.]+) total tokens/s, ([\d.]+) output tokens/s$",
                  r.stdout, re.M)
    assert m, r.stdout
    assert "Total num prompt tokens:  72" in r.stdout and "Total num output tokens:  30" in r.stdout
    assert r.stdout.startswith("machine: ") and "Split: prefill" in r.stdout
    res = json.loads(out.read_text())
    assert res["total_num_tokens"] == 102 and res["num_requests"] == 6
    assert float(m.group(3)) == round(res["output_tokens_per_second"], 2)
    assert res["output_tokens_per_second"] == 30 / res["elapsed_time"]


def test_latency(chat_model_dir, tmp_path):
    out = tmp_path / "l.json"
    r = run_bench("latency", "--model", chat_model_dir, "--batch-size", "2", "--input-len", "8", "--output-len", "4",
                  "--num-iters-warmup", "1", "--num-iters", "3", "--output-json", str(out), *ENGINE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^Avg latency: [\d.e-]+ seconds$", r.stdout, re.M), r.stdout
    for q in (10, 25, 50, 75, 90, 99):
        assert re.search(rf"^{q}% percentile latency: [\d.e-]+ seconds$", r.stdout, re.M)
    res = json.loads(out.read_text())
    assert len(res["latencies"]) == 3 and res["avg_latency"] == sum(res["latencies"]) / 3
