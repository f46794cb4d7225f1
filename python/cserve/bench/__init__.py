"""`cserve bench`: the benchmarks of `vllm bench`, for cserve and any OpenAI-compatible server.

- serve: an online benchmark against a running server (serve.py; datasets.py, backends.py,
  metrics.py, report.py);
- sweep: serve at several concurrency levels, with a table and PNG charts (sweep.py, plots.py);
- throughput, latency: the engine driven directly, offline (offline.py, machine.py).

The command line is cli.py; docs/benchmarks.md shows the commands and how to read the output.
"""
