"""Shared fixtures: a session-wide cache of tiny random transformers models saved with safetensors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT / "python"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

# Keep torch and the engine on the two cores the CI machine has.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory):
    """zoo.get(name) builds (once per session) and returns a helpers.models.BuiltModel."""
    from tests.helpers.models import ModelZoo

    return ModelZoo(tmp_path_factory.mktemp("models"))
