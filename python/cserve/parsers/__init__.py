"""Tool-call and reasoning parsers, under vLLM's names (`tool/`, `reasoning/`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_plugin_file(path: str, kind: str) -> None:
    """Import the Python file ``path`` (a ``--*-parser-plugin``) once, under a private module name,
    so the parser classes in it register themselves; ``kind`` names the plugin in errors."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{kind} plugin {path!r} is not a file")
    mod_name = f"cserve_{kind.replace(' ', '_')}_plugin_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {kind} plugin {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
