"""NCCL, loaded at run time by the CUDA library (cuda/comm/nccl_library): without it, the error
names the package to install; with NVIDIA's wheel (nvidia-nccl-cu13) it loads and reports its
version. Neither needs a GPU (NCCL loads without a driver), only a build with nvcc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")

from cserve.cuda_libs import find_nccl  # noqa: E402

PROBE = "from cserve import _cuda; print(_cuda.nccl_version()); print(_cuda.nccl_library_path())"


def _probe(library: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CSERVE_NCCL_LIBRARY=library)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_nccl_names_the_package_to_install(tmp_path):
    missing = str(tmp_path / "libnccl.so.2")
    result = _probe(missing)
    assert result.returncode != 0
    assert "pip install nvidia-nccl-cu13" in result.stderr, result.stderr
    assert missing in result.stderr  # what was tried


def test_a_library_without_nccls_symbols_is_refused():
    from cserve import _core

    result = _probe(_core.__file__)  # loads, but is not NCCL
    assert result.returncode != 0
    assert "has no ncclGetVersion" in result.stderr, result.stderr


@pytest.mark.skipif(not find_nccl(), reason="nvidia-nccl-cu13 is not installed (pip install nvidia-nccl-cu13)")
def test_nccl_from_the_wheel_loads():
    path = find_nccl()
    result = _probe(path)
    assert result.returncode == 0, result.stderr
    version, loaded = result.stdout.split()
    assert int(version) >= 22000  # NCCL 2.20 or later
    assert loaded == path
