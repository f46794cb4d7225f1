"""A soak load for a running `cserve serve`: many concurrent clients sending random requests to
/v1/completions and /v1/chat/completions (random prompt and output lengths, streamed or not, some
with n=2, stop strings or logprobs), a fraction of the streams closed mid-way. Every answer is
checked (200, well-formed, every finished stream ends with [DONE] and a finish_reason per
choice); what went wrong is collected, not raised. Used by tests/entrypoints/openai/test_soak.py
(a short run) and benchmarks/soak.py (a long one)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers.server import ServerProcess, abort_count, wait_idle

WORDS = ("the quick brown fox jumps over lazy dog journey thousand miles begins single step question "
         "glitters gold hungry foolish hello world servers stream tokens server sent events numbers "
         "punctuation river mountain window coffee yellow seven quietly running").split()
STOPS = ("e", "o ", ".", "\n", "the", "xyz", "!!")
FINISH_REASONS = ("stop", "length")


@dataclass
class SoakStats:
    done: int = 0        # answered in full and well-formed (streams: to [DONE])
    cut: int = 0         # streams the client closed before [DONE]
    cut_seqs: int = 0    # their choices (n each): the most the server can count as aborted
    failed: int = 0
    streamed: int = 0    # of done + cut
    prompt_tokens: int = 0
    completion_tokens: int = 0  # of the answered requests, from usage; cut streams: chunks read
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append(what)

    def add(self, other: "SoakStats") -> "SoakStats":
        out = SoakStats()
        for name in ("done", "cut", "cut_seqs", "failed", "streamed", "prompt_tokens", "completion_tokens"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.failures = (self.failures + other.failures)[:20]
        return out


def random_request(rng: random.Random, model: str, cut_fraction: float, max_prompt_words: int,
                   max_tokens: int) -> tuple[str, dict, int]:
    """(path, body, cut_after): cut_after > 0 = close the stream after that many data lines."""
    chat = rng.random() < 0.5
    stream = rng.random() < 0.8
    n = 2 if rng.random() < 0.15 else 1
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_prompt_words)))
    body: dict = {"model": model, "max_tokens": rng.randint(1, max_tokens), "n": n,
                  "temperature": rng.choice((0.0, 0.7, 1.0))}
    if chat:
        messages = [{"role": "user", "content": text}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "You are a soak test."})
        body["messages"] = messages
    else:
        body["prompt"] = text
    cut_after = 0
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if rng.random() < cut_fraction:
            # Longer than the others, and no early end, so that the cut lands mid-way and, often,
            # while the request is still generating (the server then aborts it).
            body["max_tokens"] = rng.randint(max_tokens, 4 * max_tokens)
            body["ignore_eos"] = True
            cut_after = rng.randint(1, max_tokens)
    if not cut_after and rng.random() < 0.2:
        body["stop"] = rng.sample(STOPS, rng.randint(1, 3))
    if rng.random() < 0.2:
        body.update({"logprobs": True, "top_logprobs": 2} if chat else {"logprobs": 2})
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, cut_after


def _check_choices(choices: list, n: int, what: str) -> str:
    reasons = {c.get("index"): c.get("finish_reason") for c in choices}
    if sorted(reasons) != list(range(n)) or any(r not in FINISH_REASONS for r in reasons.values()):
        return f"{what}: finish reasons {reasons}, n={n}"
    return ""


async def one_request(c: httpx.AsyncClient, path: str, body: dict, cut_after: int, stats: SoakStats) -> None:
    what = f"{path} stream={body.get('stream', False)} n={body['n']} max_tokens={body['max_tokens']}"
    if not body.get("stream"):
        r = await c.post(path, json=body)
        if r.status_code != 200:
            return stats.fail(f"{what}: HTTP {r.status_code} {r.text[:300]}")
        out = r.json()
        problem = _check_choices(out.get("choices", []), body["n"], what)
        if problem:
            return stats.fail(problem)
        stats.done += 1
        stats.prompt_tokens += out["usage"]["prompt_tokens"]
        stats.completion_tokens += out["usage"]["completion_tokens"]
        return
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return stats.fail(f"{what}: HTTP {r.status_code} {r.text[:300]}")
        lines = 0
        finish: dict = {}
        usage = None
        last = None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = line[6:]
            lines += 1
            if last == "[DONE]":
                break
            chunk = json.loads(last)
            if "error" in chunk or "choices" not in chunk:
                return stats.fail(f"{what}: chunk {last[:300]}")
            for choice in chunk["choices"]:
                if choice.get("finish_reason") is not None:
                    finish[choice["index"]] = choice["finish_reason"]
            usage = chunk.get("usage") or usage
            if cut_after and lines >= cut_after:
                stats.cut += 1
                stats.cut_seqs += body["n"]
                stats.streamed += 1
                stats.completion_tokens += lines
                return  # leaving the block closes the connection mid-stream
    if last != "[DONE]":
        return stats.fail(f"{what}: the stream ended without [DONE] after {lines} lines (last {last!r:.200})")
    problem = _check_choices([{"index": i, "finish_reason": f} for i, f in finish.items()], body["n"], what)
    if problem:
        return stats.fail(problem)
    if usage is None:
        return stats.fail(f"{what}: no usage chunk")
    stats.done += 1
    stats.streamed += 1
    stats.prompt_tokens += usage["prompt_tokens"]
    stats.completion_tokens += usage["completion_tokens"]


async def run_load(base_url: str, model: str, seconds: float, clients: int = 24, cut_fraction: float = 1 / 3,
                   seed: int = 0, max_prompt_words: int = 120, max_tokens: int = 64,
                   request_timeout: float = 120.0) -> SoakStats:
    """`clients` loops sending one request after another until `seconds` have passed; returns
    when the last one has ended. A request that takes over `request_timeout` is a failure."""
    stats = SoakStats()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(c: httpx.AsyncClient, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            path, body, cut_after = random_request(rng, model, cut_fraction, max_prompt_words, max_tokens)
            try:
                await asyncio.wait_for(one_request(c, path, body, cut_after, stats), request_timeout)
            except asyncio.TimeoutError:
                stats.fail(f"{path} {json.dumps(body)[:300]}: no end after {request_timeout:.0f} s")
            except (httpx.HTTPError, ValueError, KeyError) as e:
                stats.fail(f"{path} {json.dumps(body)[:300]}: {type(e).__name__}: {e}")

    async def health_loop() -> None:  # on its own connection: /health answers throughout
        async with httpx.AsyncClient(base_url=base_url, timeout=request_timeout) as c:
            while time.monotonic() < deadline:
                try:
                    r = await c.get("/health")
                    if r.status_code != 200:
                        stats.fail(f"GET /health: HTTP {r.status_code}")
                except httpx.HTTPError as e:
                    stats.fail(f"GET /health: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)

    async with httpx.AsyncClient(base_url=base_url, timeout=request_timeout, limits=limits) as c:
        await asyncio.gather(health_loop(),
                             *(client_loop(c, random.Random(seed * 1_000_003 + i)) for i in range(clients)))
    return stats


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def settle(server: ServerProcess, timeout: float = 30.0) -> list[str]:
    """What is wrong once the load has stopped: the process gone, /health not 200, /load or the
    running/waiting/KV-cache gauges not back to 0 within `timeout`. Empty when all is well."""
    if server.proc.poll() is not None:
        return [f"the server exited with {server.proc.returncode}"]
    problems = []
    with server.client(timeout=10) as http:
        deadline = time.monotonic() + timeout
        load = http.get("/load").json()["server_load"]
        while load != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            load = http.get("/load").json()["server_load"]
        if load != 0:
            problems.append(f"/load stayed at {load}")
        try:
            wait_idle(http, timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as e:
            problems.append(str(e)[:1500])
        health = http.get("/health").status_code
        if health != 200:
            problems.append(f"/health answered {health}")
    return problems


@dataclass
class SoakReport:
    warmup: SoakStats
    main: SoakStats
    seconds: float           # of the main phase, load and settling
    rss_ready: float         # MiB, before any load
    rss_warm: float          # after the warm-up, idle
    rss_end: float           # after the main phase, idle (NaN: the server died)
    rss_samples: list[tuple[float, float]]  # (seconds into the main phase, MiB) under load
    aborts: float            # requests the server counted as aborted, both phases
    problems: list[str]      # from settle(), after each phase

    @property
    def total(self) -> SoakStats:
        return self.warmup.add(self.main)

    @property
    def growth_per_min(self) -> float:
        return (self.rss_end - self.rss_warm) / (self.seconds / 60) if self.seconds else float("nan")

    def table(self) -> str:
        rows = [("phase", "seconds", "done", "cut", "failed", "streamed", "prompt tok", "output tok")]
        for name, s, secs in (("warm-up", self.warmup, None), ("main", self.main, self.seconds)):
            rows.append((name, "" if secs is None else f"{secs:.0f}", s.done, s.cut, s.failed, s.streamed,
                         s.prompt_tokens, s.completion_tokens))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in rows]
        lines += [f"aborted (server count): {self.aborts:.0f}",
                  f"RSS MiB: ready {self.rss_ready:.1f}, after warm-up {self.rss_warm:.1f}, end {self.rss_end:.1f}; "
                  f"growth after warm-up {self.rss_end - self.rss_warm:+.1f} MiB "
                  f"({self.growth_per_min:+.2f} MiB/min)",
                  "RSS MiB under load: " + (", ".join(f"{t:.0f} s {m:.1f}" for t, m in self.rss_samples) or "-")]
        return "\n".join(lines)


def soak(server: ServerProcess, warmup: float, duration: float, rss_every: float = 10.0, **load) -> SoakReport:
    """Warm-up load, settle, RSS; main load (RSS every `rss_every` s), settle, RSS. `load`:
    run_load's keyword arguments. Stops early, with NaNs, when the server dies."""
    nan = float("nan")
    with server.client(timeout=10) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        aborts_before = abort_count(http)
    pid = server.proc.pid
    rss_ready = rss_mib(pid)
    warm = asyncio.run(run_load(server.base_url, model, warmup, **load))
    problems = settle(server)
    if server.proc.poll() is not None:
        return SoakReport(warm, SoakStats(), 0.0, rss_ready, nan, nan, [], nan, problems)
    rss_warm = rss_mib(pid)

    samples: list[tuple[float, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not done.wait(rss_every):
            try:
                samples.append((time.monotonic() - start, rss_mib(pid)))
            except (OSError, KeyError):  # the server is gone: settle() says so
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    main = asyncio.run(run_load(server.base_url, model, duration, **{**load, "seed": load.get("seed", 0) + 1}))
    done.set()
    sampler.join()
    problems += settle(server)
    seconds = time.monotonic() - start
    if server.proc.poll() is not None:
        return SoakReport(warm, main, seconds, rss_ready, rss_warm, nan, samples, nan, problems)
    rss_end = rss_mib(pid)
    with server.client(timeout=10) as http:
        aborts = abort_count(http) - aborts_before
    return SoakReport(warm, main, seconds, rss_ready, rss_warm, rss_end, samples, aborts, problems)
