"""Where NVIDIA's run-time libraries are: cserve loads cuBLASLt and NCCL with dlopen (no build-time
dependency), from $CSERVE_CUBLASLT / $CSERVE_NCCL_LIBRARY, NVIDIA's PyPI wheels (`pip install
cserve[cuda]`, or the ones torch brings), or the loader's own search path."""

from __future__ import annotations

import glob
import os
import sys

_WHEEL_PATTERNS = ("nvidia/cu13/lib/libcublasLt.so.*", "nvidia/cublas/lib/libcublasLt.so.*")
_NCCL_PATTERNS = ("nvidia/nccl/lib/libnccl.so.2", "nvidia/cu13/lib/libnccl.so.2")  # nvidia-nccl-cu13


def _find(variable: str, patterns: tuple[str, ...]) -> str:
    if os.environ.get(variable):
        return os.environ[variable]
    for site in sys.path:
        for pattern in patterns:
            found = sorted(glob.glob(os.path.join(site or ".", pattern)))
            if found:
                return found[-1]
    return ""


def find_cublaslt() -> str:
    """A path to libcublasLt, or "" to let the dynamic loader search (libcublasLt.so.13/.12)."""
    return _find("CSERVE_CUBLASLT", _WHEEL_PATTERNS)


def find_nccl() -> str:
    """A path to libnccl.so.2 (tensor parallelism on GPUs), or "" to let the CUDA backend search
    (the wheel beside the cserve package, then the loader's path)."""
    return _find("CSERVE_NCCL_LIBRARY", _NCCL_PATTERNS)
