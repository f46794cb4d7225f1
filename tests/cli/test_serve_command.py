"""`cserve serve` as a process: unsupported flags stop startup with one clear line; help is instant;
a model that cannot be found stops it with one clear line too."""

from __future__ import annotations

import subprocess
import sys
from typing import Optional

import pytest

from tests.helpers.server import _pythonpath
from tests.helpers.hub import hub_repo


def run_cli(*args: str, timeout: float = 60, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=_pythonpath(), **(env or {}))
    return subprocess.run([sys.executable, "-m", "cserve.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("flags, line", [
    (["--distributed-executor-backend", "external_launcher"],
     "--distributed-executor-backend external_launcher is not supported yet"),
    (["--config-format", "mistral"], "--config-format mistral is not supported yet"),
    (["--kv-cache-dtype", "fp8_inc"], "--kv-cache-dtype fp8_inc is not supported yet"),
    (["--enable-lora"], "--enable-lora"),
])
def test_unsupported_values_stop_startup(tmp_path, flags, line):
    r = run_cli("serve", str(tmp_path), *flags)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and line in lines[0], r.stderr


def test_unknown_flag(tmp_path):
    r = run_cli("serve", str(tmp_path), "--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("ERROR"), r.stderr
    return lines[0]


def test_no_model_offline_with_an_empty_cache(tmp_path):
    # The default model would come from PyPI; offline and not cached, startup stops with one line.
    r = run_cli("serve", "--port", "0", env={"HF_HUB_OFFLINE": "1", "CSERVE_CACHE": str(tmp_path)})
    line = _one_error_line(r)
    assert "default model SmolLM2-135M-Instruct is not in the cache" in line
    assert "pass a model directory, a .gguf file, or a Hugging Face repo id" in line


def test_missing_model_fails_cleanly(tmp_path):
    r = run_cli("serve", str(tmp_path / "nope"), "--port", "0")
    assert "no such file or directory, and not a Hugging Face repo id" in _one_error_line(r)
    r = run_cli("serve", "org/not-cached", "--download-dir", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert "org/not-cached: not a local path" in _one_error_line(r)


def test_resolve_model_args(tmp_path, monkeypatch):
    from cserve.cli.args import parse_serve_args
    from cserve.cli.main import resolve_model_args

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hub_repo(tmp_path, "org/model", {"config.json": "{}", "tokenizer.json": "{}"}, commit="a" * 40)
    tok = hub_repo(tmp_path, "org/tok", {"tokenizer.json": "{}"}, commit="b" * 40)
    args = parse_serve_args(["org/model", "--download-dir", str(tmp_path), "--tokenizer", "org/tok"])
    resolve_model_args(args)
    # The API answers to the name as typed; the engine and tokenizer get local paths.
    assert args.served_model_name == ["org/model"]
    assert (args.model, args.tokenizer) == (str(model), str(tok))
    args = parse_serve_args(["org/model", "--download-dir", str(tmp_path), "--served-model-name", "m"])
    resolve_model_args(args)
    assert args.served_model_name == ["m"] and args.model == str(model) and args.tokenizer is None
    # --tokenizer-revision alone: the model repo's tokenizer at that revision (vLLM's default tokenizer).
    tok_v2 = hub_repo(tmp_path, "org/model", {"tokenizer.json": "{}"}, commit="c" * 40, refs=("v2",))
    args = parse_serve_args(["org/model", "--download-dir", str(tmp_path), "--tokenizer-revision", "v2"])
    resolve_model_args(args)
    assert (args.model, args.tokenizer) == (str(model), str(tok_v2))
    # No model: the default one, served under its name.
    monkeypatch.setenv("CSERVE_CACHE", str(tmp_path / "cserve"))
    from cserve.model_source import DEFAULT_MODEL, default_model_file

    default_model_file().parent.mkdir(parents=True)
    default_model_file().write_bytes(b"GGUF")
    args = parse_serve_args([])
    resolve_model_args(args)
    assert args.served_model_name == [DEFAULT_MODEL] and args.model == str(default_model_file())


def test_help_and_version():
    r = run_cli("serve", "--help=CacheConfig")
    assert r.returncode == 0 and "--block-size" in r.stdout and "--port" not in r.stdout
    r = run_cli("--version")
    from cserve import __version__

    assert r.returncode == 0 and r.stdout.strip() == __version__
