"""Test helpers for the HTTP server: a tiny chat model with a real tokenizer, and a
`cserve serve` process started on a free port (or a Unix socket) and stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be or not to be, that is the question.",
    "All that glitters is not gold; stay hungry, stay foolish.",
    "Hello world! Servers stream tokens over HTTP with server-sent events.",
    "Numbers 0123456789 and punctuation: , . ; : ! ? ( ) [ ] { } ' \" - _ / \\ @ # $ % ^ & * + = < > | ~ `",
]
# Printable ASCII, space and newline as byte-level BPE spells them: every token then decodes to
# valid text on its own, so a random model's output is readable and splits cleanly into tokens.
_ALPHABET = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a"]


def build_tokenizer(path: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer over ASCII, trained on a few sentences, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=_ALPHABET, show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": CHATML, "model_max_length": 1024,
    }))


def build_chat_model(path: Path, seed: int = 0, generation_config: Optional[dict] = None,
                     max_position_embeddings: int = 8192) -> Path:
    """A tiny random Llama (saved by transformers) with a tokenizer and a ChatML template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, 400)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings, bos_token_id=0,
        eos_token_id=2, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's, so greedy text varies from token to token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    elif (path / "generation_config.json").exists():
        (path / "generation_config.json").unlink()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pythonpath() -> str:
    import cserve

    root = str(Path(cserve.__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + rest if rest else "")


class ServerProcess:
    """`python -m cserve.cli.main serve [MODEL] ARGS` until stop(); log in self.log_path."""

    def __init__(self, model: Optional[str], *args: str, port: Optional[int] = None, uds: Optional[str] = None,
                 env: Optional[dict] = None, log_dir: Optional[Path] = None, scheme: str = "http") -> None:
        self.port = None if uds else (port or free_port())
        self.uds = uds
        self.scheme = scheme
        cmd = [sys.executable, "-m", "cserve.cli.main", "serve", *([model] if model else []), *args]
        cmd += ["--uds", uds] if uds else ["--host", "127.0.0.1", "--port", str(self.port)]
        full_env = {**os.environ, "PYTHONPATH": _pythonpath(), "CSERVE_NUM_THREADS": "1", **(env or {})}
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = log_dir / f"cserve-serve-{os.getpid()}-{self.port or 'uds'}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}" if self.port else "http://localhost"

    def client(self, **kw) -> httpx.Client:
        if self.uds:
            return httpx.Client(transport=httpx.HTTPTransport(uds=self.uds), base_url=self.base_url, **kw)
        if isinstance(kw.get("verify"), str):  # a CA file
            kw["verify"] = ssl.create_default_context(cafile=kw["verify"])
        return httpx.Client(base_url=self.base_url, **kw)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0, **client_kw) -> float:
        """Seconds from start until /health answered 200."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=2.0, **client_kw) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cserve serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if c.get("/health").status_code == 200:
                        return time.monotonic() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"cserve serve did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(model: Optional[str], *args: str, **kw) -> Iterator[ServerProcess]:
    """A ServerProcess that answers /health, stopped on leaving (for module-scoped fixtures)."""
    proc = ServerProcess(model, *args, **kw)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def metric(http: httpx.Client, name: str) -> float:
    """The metric's value, summed over its series (one per data-parallel engine)."""
    values = []
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if "finished_reason" in name or "finished_reason" not in line:
                values.append(float(line.rsplit(" ", 1)[1]))
    if not values:
        raise KeyError(name)
    return sum(values)


def abort_count(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError("abort")


def wait_idle(http: httpx.Client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (metric(http, "vllm:num_requests_running") == 0 and metric(http, "vllm:num_requests_waiting") == 0
                and metric(http, "vllm:kv_cache_usage_perc") == 0):
            return
        time.sleep(0.05)
    raise AssertionError("the server did not return to idle:\n" + http.get("/metrics").text[:2000])


def child_processes(parent: int, marker: str) -> list[int]:
    """The processes `parent` started whose command line holds `marker` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and marker in cmdline:
            pids.append(int(entry))
    return pids


def process_gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
