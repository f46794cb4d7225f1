"""Default sampling parameters from generation_config.json (--generation-config auto|vllm|DIR)."""

from __future__ import annotations

import json

import pytest

from cserve.generation_config import load_generation_defaults


def test_modes(tmp_path):
    model, other = tmp_path / "model", tmp_path / "other"
    model.mkdir()
    other.mkdir()
    (model / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 100, "do_sample": True, "bos_token_id": 1}))
    (other / "generation_config.json").write_text(json.dumps({"top_k": 20}))
    assert load_generation_defaults(str(model)) == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 100}
    assert load_generation_defaults(str(model), "vllm") == {}
    assert load_generation_defaults(str(model), str(other)) == {"top_k": 20}
    assert load_generation_defaults(str(model), "auto", {"temperature": 0.1, "min_p": 0.2}) == {
        "temperature": 0.1, "top_p": 0.9, "max_tokens": 100, "min_p": 0.2}
    with pytest.raises(ValueError, match="not a directory"):
        load_generation_defaults(str(model), str(tmp_path / "missing"))
