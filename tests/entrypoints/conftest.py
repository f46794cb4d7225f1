"""A tiny chat model (random Llama, trained ASCII BPE tokenizer, ChatML template) for the servers."""

from __future__ import annotations

import pytest

from tests.helpers.server import build_chat_model


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory) -> str:
    return str(build_chat_model(tmp_path_factory.mktemp("tiny_chat"), generation_config={"temperature": 0.7}))
