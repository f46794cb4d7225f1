"""The kernel tests and model parity under every lower instruction set.

CSERVE_ISA is read once per process, so each level runs in its own pytest subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_suite_under_isa(isa, tmp_path):
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
