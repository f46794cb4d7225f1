"""`cserve serve` as a process: unsupported flags stop startup with one clear line; help is instant."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.server import _pythonpath


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=_pythonpath())
    return subprocess.run([sys.executable, "-m", "cserve.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("flags, line", [
    (["-tp", "2"], "--tensor-parallel-size 2 is not supported yet"),
    (["--quantization", "awq"], "--quantization awq is not supported yet"),
    (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype fp8 is not supported yet"),
    (["--enable-lora"], "--enable-lora"),
])
def test_unsupported_values_stop_startup(tmp_path, flags, line):
    r = run_cli("serve", str(tmp_path), *flags)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and line in lines[0], r.stderr


def test_unknown_flag_and_missing_model(tmp_path):
    r = run_cli("serve", str(tmp_path), "--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr
    r = run_cli("serve")
    assert r.returncode == 2 and "model is required" in r.stderr


def test_missing_model_directory_fails_cleanly(tmp_path):
    r = run_cli("serve", str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 1
    assert "no such model directory" in r.stderr and "Traceback" not in r.stderr


def test_help_and_version():
    r = run_cli("serve", "--help=CacheConfig")
    assert r.returncode == 0 and "--block-size" in r.stdout and "--port" not in r.stdout
    r = run_cli("--version")
    from cserve import __version__

    assert r.returncode == 0 and r.stdout.strip() == __version__
