"""Structured outputs: what a grammar costs. 16 concurrent chats with a json_schema against the
same 16 without one, through `cserve serve` and the openai client (output tok/s of each, and the
ratio); then grammar compile times for typical schemas: a cold start (the compile worker process
starts), a new schema on a warm worker, and a cached one.

    python benchmarks/structured_outputs.py --model DIR [--streams 16] [--max-tokens 128]
                                            [--rounds 3] [-- extra cserve serve flags]

The model must have a chat template (SmolLM2-135M-Instruct: tests/helpers/smollm2.py builds it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.server import ServerProcess  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "year": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "summary": {"type": "string"}}, "required": ["title", "year", "tags", "summary"]}
TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
    "type": "object", "required": ["query", "limit"], "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "filters": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"enum": ["date", "author", "kind"]}, "value": {"type": "string"}}}}}}}}
    for i in range(4)]


def run_round(client, model: str, streams: int, max_tokens: int, constrained: bool) -> tuple[int, float]:
    def one(i: int) -> int:
        kw = dict(model=model, messages=[{"role": "user", "content": f"Describe film number {i} in detail as JSON."}],
                  max_tokens=max_tokens, temperature=0.8, seed=i)
        if constrained:
            kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "film", "schema": SCHEMA}}
        return client.chat.completions.create(**kw).usage.completion_tokens

    t = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(one, range(streams)))
    return tokens, time.perf_counter() - t


def compile_times(model: str) -> dict[str, float]:
    from cserve.sampling_params import StructuredOutputsParams
    from cserve.structured import GrammarService
    from cserve.tokenizer.loading import load_tokenizer

    tok = load_tokenizer(model)
    service = GrammarService(tok, tok.get_vocab_size(), [tok.token_to_id("<|im_end|>") or 0])
    tools_schema = {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"enum": [t["function"]["name"]]},
                                          "parameters": t["function"]["parameters"]},
         "required": ["name", "parameters"]} for t in TOOLS]}}
    out = {}
    for label, so in (("cold (worker starts), film schema", StructuredOutputsParams(json=SCHEMA)),
                      ("warm, 4-tool required schema", StructuredOutputsParams(json=tools_schema)),
                      ("warm, regex", StructuredOutputsParams(regex=r"[A-Z][a-z]+ \d{4}")),
                      ("cached, 4-tool required schema", StructuredOutputsParams(json=tools_schema))):
        t = time.perf_counter()
        service.compile(so)
        out[label] = (time.perf_counter() - t) * 1000
    service.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    import openai

    with ServerProcess(a.model, "--served-model-name", "m", "--max-model-len", "2048", *a.extra) as server:
        server.wait_ready(timeout=300)
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=600)
        run_round(client, "m", a.streams, 16, True)  # warm-up: the schema compiles once, then is cached
        rates = {False: [], True: []}
        for _ in range(a.rounds):
            for constrained in (False, True):
                tokens, secs = run_round(client, "m", a.streams, a.max_tokens, constrained)
                rates[constrained].append(tokens / secs)
    free, json_rate = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"{a.streams} streams, max_tokens {a.max_tokens}, median of {a.rounds} rounds")
    print(f"  unconstrained      {free:8.1f} output tok/s")
    print(f"  json_schema        {json_rate:8.1f} output tok/s   ({100 * json_rate / free:.1f}% of unconstrained)")
    print("grammar compile times (ms):")
    for label, ms in compile_times(a.model).items():
        print(f"  {label:36s} {ms:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
