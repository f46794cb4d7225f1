"""Default sampling parameters from generation_config.json, as `vllm serve --generation-config`
applies them: `auto` reads the model directory's file, `vllm` uses none, a directory reads the
file there; --override-generation-config entries replace or add to them. A request's own
values always win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

# generation_config.json keys that become SamplingParams defaults (vLLM's list).
_SAMPLING_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p")


def load_generation_defaults(model_dir: str, mode: Optional[str] = "auto",
                             overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    mode = mode or "auto"
    raw: dict[str, Any] = {}
    if mode != "vllm":
        directory = Path(model_dir) if mode == "auto" else Path(mode)  # a GGUF file has none: no such dir
        if mode != "auto" and not directory.is_dir():
            raise ValueError(f"--generation-config {mode}: not a directory")
        file = directory / "generation_config.json"
        if file.is_file():
            raw = json.loads(file.read_text())
    defaults = {k: raw[k] for k in _SAMPLING_KEYS if raw.get(k) is not None}
    if raw.get("max_new_tokens") is not None:
        defaults["max_tokens"] = raw["max_new_tokens"]
    for key, value in (overrides or {}).items():
        defaults["max_tokens" if key == "max_new_tokens" else key] = value
    return defaults
