"""Where NVIDIA's run-time libraries are: cserve loads cuBLASLt with dlopen (no build-time
dependency), from $CSERVE_CUBLASLT, NVIDIA's PyPI wheels (`pip install cserve[cuda]`, or the
ones torch brings), or the loader's own search path."""

from __future__ import annotations

import glob
import os
import sys

_WHEEL_PATTERNS = ("nvidia/cu13/lib/libcublasLt.so.*", "nvidia/cublas/lib/libcublasLt.so.*")


def find_cublaslt() -> str:
    """A path to libcublasLt, or "" to let the dynamic loader search (libcublasLt.so.13/.12)."""
    if os.environ.get("CSERVE_CUBLASLT"):
        return os.environ["CSERVE_CUBLASLT"]
    for site in sys.path:
        for pattern in _WHEEL_PATTERNS:
            found = sorted(glob.glob(os.path.join(site or ".", pattern)))
            if found:
                return found[-1]
    return ""
