"""Shared pieces of the scripts in benchmarks/: the `smollm2` model names, and (from
cserve.bench.machine) the machine, contention and bandwidth reports.

`--model smollm2` builds (once) and uses SmolLM2-135M-Instruct from tests/helpers/smollm2.py,
cached under ${CSERVE_TEST_CACHE:-~/.cache/cserve-tests}; `smollm2-gguf` is the Q4_1 GGUF it is
built from; any other value is a model directory or .gguf file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import cserve  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT / "python"))

from cserve.bench.machine import Contention, bandwidth_probe, build_id, engine_line, machine_line  # noqa: E402,F401
from cserve.bench.offline import write_json  # noqa: E402,F401


def _load_smollm2_helper():
    path = ROOT / "tests" / "helpers" / "smollm2.py"
    spec = importlib.util.spec_from_file_location("cserve_bench_smollm2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_model(name: str) -> str:
    if name.lower() == "smollm2":
        helper = _load_smollm2_helper()
        return str(helper.smollm2_dir(helper.default_cache_root()))
    if name.lower() == "smollm2-gguf":  # the Q4_1 file the directory above is built from
        helper = _load_smollm2_helper()
        return str(helper.download_gguf(helper.default_cache_root() / "gguf"))
    if not (Path(name).is_dir() or name.lower().endswith(".gguf")):
        raise SystemExit(f"--model {name}: not a directory or .gguf (or 'smollm2', 'smollm2-gguf')")
    return name


def with_model_path(argv: list[str], default: str = "smollm2") -> list[str]:
    """argv with --model's value (default `smollm2`) replaced by its path, for `cserve bench`."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            argv[i + 1] = resolve_model(argv[i + 1])
            return argv
        if arg.startswith("--model="):
            argv[i] = "--model=" + resolve_model(arg.split("=", 1)[1])
            return argv
    if any(a in ("-h", "--help") for a in argv):
        return argv
    return ["--model", resolve_model(default), *argv]
