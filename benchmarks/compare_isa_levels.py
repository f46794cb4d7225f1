"""../shared/peers/compare.py's measurement with cserve and llama.cpp held to a lower x86 level,
so that one CPU measures the paths other CPU kinds take: cserve with CSERVE_ISA (avx2: Zen 2/3,
Haswell to Comet Lake; avx2_vnni: Alder Lake and other AVX-VNNI CPUs without AVX-512), llama.cpp
built for that level only (GGML_NATIVE=OFF, GGML_AVX2=ON, GGML_AVX512=OFF, GGML_AMX_*=OFF and
GGML_AVX_VNNI on or off). vLLM-CPU is left out: held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2) its worker aborts at start.

    python benchmarks/compare_isa_levels.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --hf smollm2-135m-instruct-f32 --isa avx2 --llama-server /tmp/peers/llamacpp-avx2/bin/llama-server
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "peers"))
import compare  # noqa: E402  (../shared/peers/compare.py: one load generator for every server)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--hf", required=True, help="a Hugging Face model directory (served in bf16)")
    ap.add_argument("--isa", required=True, help="CSERVE_ISA for cserve: avx2, avx2_vnni, avx512, ...")
    ap.add_argument("--llama-server", required=True, help="a llama-server built for the same level")
    ap.add_argument("--cserve", default=shutil.which("cserve") or "cserve")
    ap.add_argument("--runs", type=int, default=2, help="best of N load runs per figure")
    a = ap.parse_args()
    serve = [a.cserve, "serve", "--host", "127.0.0.1", "--port", "{PORT}", "--served-model-name", "m"]
    env = {"CSERVE_ISA": a.isa}
    rows = [
        (f"llama.cpp llama-server ({Path(a.llama_server).parent.parent.name}), GGUF", compare.measure(
            [a.llama_server, "-m", a.gguf, "--host", "127.0.0.1", "--port", "{PORT}", "-c", "65536", "-np", "16",
             "-cb", "-t", str(os.cpu_count()), "--no-webui"], runs=a.runs)),
        (f"cserve CSERVE_ISA={a.isa}, GGUF", compare.measure(serve[:2] + [a.gguf] + serve[2:], env=env, runs=a.runs)),
        (f"cserve CSERVE_ISA={a.isa}, bf16",
         compare.measure(serve[:2] + [a.hf, "--dtype", "bfloat16"] + serve[2:], env=env, runs=a.runs)),
    ]
    print("| server | ready (s) | RSS (MB) | 16 concurrent (out tok/s) | 1 stream (out tok/s) |")
    print("|---|---|---|---|---|")
    for name, (ready, mem, c16, c1) in rows:
        print(f"| {name} | {ready:.1f} | {mem} | {c16:.1f} | {c1:.1f} |")


if __name__ == "__main__":
    main()
