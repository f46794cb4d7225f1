"""Time until LLM(...) is ready, and (under /usr/bin/time -v) peak memory, for SmolLM2-135M in
bf16 serving 16 x (100 in / 64 out).

    /usr/bin/time -v python benchmarks/startup_memory.py
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from smollm2 import smollm2_dir  # noqa: E402


def main() -> None:
    model_dir = smollm2_dir()
    start = time.perf_counter()
    from cserve import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype="bfloat16")
    ready = time.perf_counter() - start
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(1000, 40000) for _ in range(100)]} for _ in range(16)]
    llm.generate(prompts, SamplingParams(max_tokens=64, ignore_eos=True), use_tqdm=False)
    print(f"LLM(...) ready in {ready:.2f} s (import, load, KV cache, warm-up)")


if __name__ == "__main__":
    main()
