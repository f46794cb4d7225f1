"""The C++ embedding example: built with CMake against the installed package, run on a tiny model."""

import shutil
import subprocess
from pathlib import Path

import pytest

import cserve

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cpp_example_generates_what_python_generates(tiny_model_dir, tmp_path):
    build = tmp_path / "build"
    subprocess.run(
        ["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={cserve.cmake_prefix_path()}"],
        check=True, capture_output=True, text=True,
    )
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    prompt = [3, 14, 15, 92, 65]
    run = subprocess.run([str(build / "generate"), tiny_model_dir, "10", *map(str, prompt)],
                         check=True, capture_output=True, text=True)
    cpp_tokens = [int(t) for t in run.stdout.split()]

    llm = cserve.LLM(tiny_model_dir, dtype="float32")
    out = llm.generate({"prompt_token_ids": prompt},
                       cserve.SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert cpp_tokens == out[0].outputs[0].token_ids


