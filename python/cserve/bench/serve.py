"""`cserve bench serve`: drives any OpenAI-compatible server (or cserve's gRPC API) as
`vllm bench serve` does, and prints and saves vLLM's result.

One run: wait until the server answers, send one test request (its failure stops the run with
the server's error), --num-warmups untimed requests, then every request at its arrival time
(a gamma process of --request-rate and --burstiness, seeded by --seed) under at most
--max-concurrency in flight; the duration is from the first send to the last completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Optional

from cserve.bench.backends import RequestInput, RequestSettings, make_backend
from cserve.bench.datasets import SampleRequest
from cserve.bench.metrics import RequestRecord


def arrival_times(num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0,
                  ramp_up: Optional[tuple[str, float, float]] = None) -> list[float]:
    """Seconds after the start at which each request is sent: gaps drawn from a gamma
    distribution of shape `burstiness` and mean 1 / rate, then scaled so that the last request
    goes at num_requests / request_rate (vLLM's normalization, which keeps throughput figures
    from moving with the seed). `ramp_up` = (linear | exponential, start rps, end rps)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gaps = []
    for i in range(num_requests):
        rate = request_rate if ramp_up is None else _ramp_rate(ramp_up, i / max(num_requests - 1, 1))
        # rate <= 0 only at a linear ramp's start: send at once rather than never
        gaps.append(0.0 if rate == float("inf") or rate <= 0 else rng.gamma(burstiness, 1.0 / (rate * burstiness)))
    times = np.cumsum(gaps)
    if ramp_up is None and len(times) and times[-1] > 0:
        times *= (num_requests / request_rate) / times[-1]
    return times.tolist()


def _ramp_rate(ramp_up: tuple[str, float, float], progress: float) -> float:
    strategy, start, end = ramp_up
    return start + (end - start) * progress if strategy == "linear" else start * (end / start) ** progress


@dataclass
class ServeRun:
    """What every benchmark of a `bench serve` or `bench sweep` command shares."""

    args: object
    backend: object
    requests: list[SampleRequest]
    count_tokens: object  # text -> number of tokens
    model_id: str
    tokenizer_id: str
    goodput: dict[str, float]
    selected: list[str]  # --percentile-metrics
    percentiles: list[float]


def _tokenizer_path(name: str):
    from cserve.model_source import DEFAULT_MODEL, default_model_path, resolve_tokenizer

    return default_model_path() if name == DEFAULT_MODEL else resolve_tokenizer(name)


def _template_renderer(path: str):
    """prompt -> the prompt as the model's chat template renders one user message; None without a template."""
    from cserve.tokenizer.loading import load_template

    template = load_template(path)
    if template is None:
        return None
    return lambda prompt: template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)


async def setup(args) -> ServeRun:
    """Builds the backend, finds the model (the server's first when --model is unset), loads the
    tokenizer and samples the requests."""
    from cserve.bench.datasets import sample_requests
    from cserve.bench.metrics import parse_goodput
    from cserve.bench.serve_args import check_traffic, headers_of, metric_percentiles, sampling_body, selected_metrics
    from cserve.tokenizer.loading import load_tokenizer

    check_traffic(args)
    goodput, selected, percentiles = parse_goodput(args.goodput), selected_metrics(args), metric_percentiles(args)
    settings = RequestSettings(model="", ignore_eos=args.ignore_eos, logprobs=args.logprobs,
                               extra_body=sampling_body(args))
    backend = make_backend(args.backend, args.base_url, args.host, args.port, args.endpoint, headers_of(args),
                           settings)
    try:
        model_id = args.model
        if model_id is None:
            await wait_reachable(backend, args.ready_check_timeout_sec)
            names = await backend.model_names()
            if not names:
                raise ValueError("the server lists no model: pass --model")
            model_id = names[0]
        settings.model = args.served_model_name or model_id
        tokenizer_id = args.tokenizer or model_id
        path = _tokenizer_path(tokenizer_id)
        tokenizer = load_tokenizer(str(path))
        if tokenizer is None:
            raise ValueError(f"{path}: no tokenizer.json; pass --tokenizer")
        # a chat endpoint renders the template itself
        render = _template_renderer(str(path)) if args.backend != "openai-chat" else None
        requests = sample_requests(args, tokenizer, render)
        if not requests:
            raise ValueError("the dataset gave no requests")
    except BaseException:
        await backend.close()
        raise

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return ServeRun(args, backend, requests, count_tokens, model_id, tokenizer_id, goodput, selected, percentiles)


async def wait_reachable(backend, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await backend.reachable():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer within {timeout_s} s (--ready-check-timeout-sec)")
        await asyncio.sleep(1.0)


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=disable, file=sys.stderr, dynamic_ncols=True)


async def _send_all(backend, inputs: list[RequestInput], times: list[float], max_concurrency: Optional[int],
                    pbar) -> list[RequestRecord]:
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()

    async def one(req: RequestInput) -> RequestRecord:
        async with limit:
            record = await backend.send(req)
        pbar.update(1)
        return record

    start = time.perf_counter()
    tasks = []
    for req, at in zip(inputs, times):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(req)))
    return list(await asyncio.gather(*tasks))


def _test_input(run: ServeRun) -> RequestInput:
    first = run.requests[0]
    return RequestInput(first.prompt, first.prompt_len, first.expected_output_len)


async def check_server(run: ServeRun) -> None:
    """vLLM's initial test run: one request that must succeed, else the run stops with its error."""
    print("Starting initial single prompt test run...")
    if run.args.ready_check_timeout_sec > 0:
        await wait_reachable(run.backend, run.args.ready_check_timeout_sec)
    record = await run.backend.send(_test_input(run))
    if not record.success:
        raise RuntimeError(f"Initial test run failed - Please make sure benchmark arguments are correctly "
                           f"specified. Error: {record.error}")
    print("Initial test run completed.")


async def warm_up(run: ServeRun, max_concurrency: Optional[int]) -> None:
    """--num-warmups copies of the test request, untimed."""
    n = run.args.num_warmups
    if n > 0:
        print(f"Warming up with {n} requests...")
        pbar = _progress(n, run.args.disable_tqdm)
        await _send_all(run.backend, [_test_input(run)] * n, [0.0] * n, max_concurrency, pbar)
        pbar.close()
        print("Warmup run completed.")


async def benchmark(run: ServeRun, max_concurrency: Optional[int], id_prefix: str = "") -> dict:
    """One timed pass over the requests; prints vLLM's block and returns the result (the run's
    settings first, then the figures), with the raw samples under "_samples" for the plots."""
    from cserve.bench.metrics import calculate_metrics, result_dict
    from cserve.bench.report import result_lines, run_settings

    args = run.args
    ramp = (args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps) if args.ramp_up_strategy else None
    times = arrival_times(len(run.requests), args.request_rate, args.burstiness, args.seed, ramp)
    prefix = args.request_id_prefix + id_prefix
    inputs = [RequestInput(r.prompt, r.prompt_len, r.expected_output_len, f"{prefix}{i}")
              for i, r in enumerate(run.requests)]
    print("Starting main benchmark run...")
    if ramp is None:
        print(f"Traffic request rate: {args.request_rate}")
    else:
        print(f"Traffic ramp-up strategy: {ramp[0]}. Will increase RPS from {ramp[1]} to {ramp[2]} RPS over the "
              "duration of the benchmark.")
    process = "Poisson process" if args.burstiness == 1.0 else "Gamma distribution"
    print(f"Burstiness factor: {args.burstiness} ({process})")
    print(f"Maximum request concurrency: {max_concurrency}")
    pbar = _progress(len(inputs), args.disable_tqdm)
    start = time.perf_counter()
    records = await _send_all(run.backend, inputs, times, max_concurrency, pbar)
    duration = time.perf_counter() - start
    pbar.close()
    metrics = calculate_metrics(records, duration, run.count_tokens, run.goodput)
    result = {**run_settings(args, run.model_id, run.tokenizer_id, max_concurrency),
              **result_dict(metrics, records, duration, run.selected, run.percentiles, run.goodput)}
    print("\n".join(result_lines(result, run.selected, run.percentiles)))
    failed = [r.error for r in records if not r.success]
    if failed:
        print(f"{len(failed)} requests failed; the first error: {failed[0]}", file=sys.stderr)
    result["_samples"] = metrics.samples
    return result


def public(result: dict) -> dict:
    """The result without the private keys (the raw samples)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


async def _main(args) -> int:
    from cserve.bench.report import save_result

    run = await setup(args)
    try:
        await check_server(run)
        await warm_up(run, args.max_concurrency)
        result = await benchmark(run, args.max_concurrency)
    finally:
        await run.backend.close()
    if args.save_result or args.append_result:
        print(f"Result saved to {save_result(args, public(result))}")
    return 0 if result["completed"] else 1


def main(args) -> int:
    return asyncio.run(_main(args))
