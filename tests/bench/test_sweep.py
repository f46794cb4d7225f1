"""`cserve bench sweep` over two concurrency levels against the real server: a vLLM block and a
result file per level, one table, and PNG charts with --plot."""

from __future__ import annotations

import json

from tests.bench.conftest import MODEL_NAME, run_bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sweep_prints_a_table_and_writes_pngs(bench_server, chat_model_dir, tmp_path):
    r = run_bench("sweep", "--port", str(bench_server.port), "--model", chat_model_dir, "--served-model-name",
                  MODEL_NAME, "--concurrency-levels", "1,3", "--num-prompts", "6", "--random-input-len", "16",
                  "--random-output-len", "6", "--ignore-eos", "--num-warmups", "2", "--save-result",
                  "--result-dir", str(tmp_path), "--plot")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("============ Serving Benchmark Result ============") == 2
    results = sorted((json.loads(p.read_text()) for p in tmp_path.glob("*.json")), key=lambda x: x["max_concurrency"])
    assert [x["max_concurrency"] for x in results] == [1, 3]
    assert all(x["completed"] == 6 and x["total_output_tokens"] == 36 for x in results)

    table = r.stdout[r.stdout.index(" Sweep: max concurrency "):].splitlines()
    assert table[1].startswith("| concurrency | completed |")
    rows = [line.split("|")[1:-1] for line in table[3:5]]
    for row, x in zip(rows, results):
        assert int(row[0]) == x["max_concurrency"] and int(row[1]) == 6
        assert float(row[4]) == round(x["output_throughput"], 2)
        assert float(row[6]) == round(x["mean_ttft_ms"], 2)
    for name in ("sweep_throughput_latency.png", "sweep_latency_distributions.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        assert f"Plot saved to {tmp_path / name}" in r.stdout


def test_levels_must_be_integers(chat_model_dir):
    r = run_bench("sweep", "--model", chat_model_dir, "--concurrency-levels", "1,x")
    assert r.returncode == 1 and "--concurrency-levels" in r.stderr
