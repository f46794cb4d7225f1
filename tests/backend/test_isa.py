"""The kernel tests and model parity under every lower instruction set.

CSERVE_ISA is read once per process, so each level runs in its own pytest subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

NODES = [
    "tests/backend/test_kernels.py",
    "tests/backend/test_qgemm.py",
    "tests/model/test_parity.py::test_alone[llama]",
    "tests/model/test_parity.py::test_alone[qwen3]",
    "tests/model/test_parity.py::test_chunked_prefill[mistral]",
    "tests/model/test_dtypes.py::test_half_precision_checkpoint_loads_exactly",
    "tests/model/test_dtypes.py::test_half_precision_close_to_float32[llama-bfloat16]",
]


def _env(**extra) -> dict:
    """This process's environment, with the cserve it imported reachable the same way."""
    import cserve

    env = dict(os.environ, **extra)
    paths = [str(ROOT)]
    source = str(Path(cserve.__file__).resolve().parent.parent)
    if source in {str(Path(p).resolve()) for p in sys.path if p}:
        paths.insert(0, source)  # found through sys.path (e.g. PYTHONPATH=python), not an installed finder
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# avx2 is plain AVX2 (as on Zen 3) even where the CPU has AVX-VNNI; avx2_vnni adds it where present;
# avx512_bf16 keeps the vdpbf16ps / vpdpbusd kernels where the default run uses AMX tiles.
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx2_vnni", "avx512", "avx512_bf16"])
def test_suite_under_isa(isa, tmp_path):
    if isa == "avx512_bf16":
        from cserve._core import testing as T

        if not T.amx_in_use():
            pytest.skip("the default run already uses these kernels (no AMX here)")
    env = _env(CSERVE_ISA=isa)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"),
           *NODES]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"CSERVE_ISA={isa}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout


def test_bad_isa_value_is_an_error():
    code = "from cserve._core import testing as T; T.isa()"
    env = _env(CSERVE_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # A clean Python exception naming the variable, not a crash.
    assert proc.returncode == 1, proc.stderr
    assert "CSERVE_ISA" in proc.stderr and "Traceback" in proc.stderr


_QGEMM_SCRIPT = r"""
import sys
import numpy as np
from gguf import GGMLQuantizationType as Q
from cserve._core import testing as T
from tests.backend.test_qgemm import make_weight

out = {"kernel": np.array(T.qgemm_kernel())}
for qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K):  # 4/8 bits, f16/f32 scales
    rng = np.random.default_rng(int(qtype))
    k = 256 if qtype in (Q.Q4_K, Q.Q6_K) else 160
    raw, _ = make_weight(qtype, 70, k, rng)
    x = rng.standard_normal((17, k)).astype(np.float32)
    for m in range(1, 18):
        out[f"{qtype.name}_{m}"] = T.quant_linear(int(qtype), raw, 70, k, x[:m], num_threads=1 + m % 2)[0]
np.savez(sys.argv[1], **out)
"""


def test_quantized_gemm_agrees_with_scalar_under_every_isa(tmp_path):
    """The quantized GEMM of every kernel (AVX-512 VNNI, AVX2 + AVX-VNNI, plain AVX2) against the
    scalar one, for every row count 1..17, 4- and 8-bit codes, f16 and f32 scales."""
    pytest.importorskip("gguf")
    results = {}
    for isa in ["scalar", "avx2", "avx2_vnni", "avx512"]:
        path = tmp_path / f"{isa}.npz"
        proc = subprocess.run([sys.executable, "-c", _QGEMM_SCRIPT, str(path)], cwd=ROOT, env=_env(CSERVE_ISA=isa),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[isa] = dict(np.load(path))
    assert str(results["scalar"]["kernel"]) == "scalar"
    assert str(results["avx2"]["kernel"]) in ("avx2", "scalar")  # scalar only on a CPU without AVX2
    kernels = {str(r["kernel"]) for r in results.values()}
    ref = results["scalar"]
    for isa, got in results.items():
        for key, want in ref.items():
            if key == "kernel":
                continue
            tol = 1e-5 * max(1.0, float(np.abs(want).max()))
            assert np.abs(got[key] - want).max() <= tol, f"CSERVE_ISA={isa} ({got['kernel']}) {key}"
    # Rows of one call must not depend on how many rows share it (a verification step).
    for isa, got in results.items():
        for key in ref:
            if key.endswith("_17"):
                name = key[:-3]
                for m in range(1, 17):
                    np.testing.assert_array_equal(got[f"{name}_{m}"], got[key][:m], err_msg=f"{isa} {name} m={m}")
    assert len(kernels) >= 2
