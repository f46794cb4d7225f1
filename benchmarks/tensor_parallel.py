"""Tensor parallelism's cost on this machine: decode time per token with one stream and output
tok/s with 16 streams, -tp 1 against -tp 2 (and more with --sizes), offline through LLM, each rank
on its own cores (VLLM_CPU_OMP_THREADS_BIND=auto). With as many ranks as cores, -tp N runs the
same arithmetic on the same cores as -tp 1, so the difference is the price of splitting: the
all-reduces (two per layer, plus the embedding's) and the step's broadcast.

    python benchmarks/tensor_parallel.py --model DIR [--sizes 1,2] [--tokens 128] [--dtype bfloat16]
    python benchmarks/tensor_parallel.py --dummy-llama 2048,16,32,8,5632 [...]

--dummy-llama hidden,layers,heads,kv_heads,intermediate: a Llama of that shape with random
weights (load_format dummy; vocab 32000), for shapes no small checkpoint has.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def dummy_llama(shape: str) -> str:
    import json
    import tempfile

    hidden, layers, heads, kv, inter = (int(v) for v in shape.split(","))
    path = tempfile.mkdtemp(prefix="cserve-tp-bench-")
    with open(f"{path}/config.json", "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
                   "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
                   "intermediate_size": inter, "vocab_size": 32000, "max_position_embeddings": 4096,
                   "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}, f)
    return path


def measure(model: str, tp: int, tokens: int, dtype: str, dummy: bool) -> tuple[float, float]:
    from cserve import LLM, SamplingParams

    extra = {"load_format": "dummy", "skip_tokenizer_init": True} if dummy else {}
    llm = LLM(model, tensor_parallel_size=tp, dtype=dtype, max_model_len=1024, kv_cache_memory_bytes=1 << 28,
              **extra)
    prompt = {"prompt_token_ids": list(range(100, 164))}
    sp = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    one = []
    for _ in range(3):
        t = time.perf_counter()
        llm.generate([prompt], sp, use_tqdm=False)
        one.append((time.perf_counter() - t) / tokens)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": list(range(100 + i, 164 + i))} for i in range(16)], sp, use_tqdm=False)
    many = 16 * tokens / (time.perf_counter() - t)
    llm.shutdown()
    return statistics.median(one), many


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--dummy-llama", help="hidden,layers,heads,kv_heads,intermediate")
    ap.add_argument("--sizes", default="1,2")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    if not a.model and not a.dummy_llama:
        ap.error("--model or --dummy-llama")
    model = a.model or dummy_llama(a.dummy_llama)
    print(f"{'-tp':>4} {'ms/token (1 stream)':>20} {'tok/s (16 streams)':>20}")
    for tp in (int(s) for s in a.sizes.split(",")):
        per_token, rate = measure(model, tp, a.tokens, a.dtype, not a.model)
        print(f"{tp:>4} {per_token * 1000:>20.2f} {rate:>20.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
