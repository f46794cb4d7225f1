"""From StructuredOutputsParams to a compiled grammar: the checks that make bad input a clear
error before any work is queued, the grammar source for xgrammar, a cache keyed by that source,
and compilation bounded in time (in the compile worker process)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

from cserve.structured.compile_worker import CompileTimeout, CompileWorker

if TYPE_CHECKING:  # the C++ extension loads with the first grammar, not with the flags
    from cserve.sampling_params import StructuredOutputsParams

# Nesting deeper than this is refused before compiling: xgrammar's schema converter takes time
# exponential in the depth of some schemas, and no real schema comes close.
MAX_SCHEMA_DEPTH = 64
BACKENDS = ("auto", "xgrammar", "guidance")
OTHER_BACKENDS = ("outlines", "lm-format-enforcer")


class GrammarError(ValueError):
    """A constraint that cannot be compiled; `param` names the request field."""

    def __init__(self, message: str, param: str = "structured_outputs") -> None:
        super().__init__(message)
        self.param = param


@dataclass
class StructuredOutputsConfig:
    """--structured-outputs-config, with vLLM's keys; compile_timeout (seconds) and cache_bytes
    are cserve's."""

    backend: str = "auto"
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    reasoning_parser: str = ""
    reasoning_parser_plugin: str = ""
    enable_in_reasoning: bool = False
    compile_timeout: float = 10.0
    cache_bytes: int = 512 << 20

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "StructuredOutputsConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"--structured-outputs-config: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        config = cls(**data)
        check_backend(config.backend, "--structured-outputs-config backend")
        if not config.compile_timeout > 0:
            raise ValueError("--structured-outputs-config compile_timeout must be positive")
        return config


def config_from_args(args: Any) -> StructuredOutputsConfig:
    """--structured-outputs-config, with the older --guided-decoding-backend (a backend name and
    ":"-separated options) and --reasoning-parser folded in, as vLLM does; ValueError when bad."""
    data = dict(getattr(args, "structured_outputs_config", None) or {})
    legacy = getattr(args, "guided_decoding_backend", None) or "xgrammar"
    name, _, options = legacy.partition(":")
    check_backend(name, "--guided-decoding-backend")
    data.setdefault("backend", name)
    for option in filter(None, options.split(",")):
        if option == "disable-any-whitespace":
            data.setdefault("disable_any_whitespace", True)
        elif option == "no-fallback":
            data.setdefault("disable_fallback", True)
        elif option in ("no-additional-properties", "disable-additional-properties"):
            data.setdefault("disable_additional_properties", True)
        else:
            raise ValueError(f"--guided-decoding-backend: unknown option {option!r}")
    if getattr(args, "reasoning_parser", ""):
        data.setdefault("reasoning_parser", args.reasoning_parser)
    return StructuredOutputsConfig.from_dict(data)


def check_backend(name: Optional[str], where: str) -> None:
    """auto, xgrammar and guidance are built; the other vLLM backends are refused by name."""
    base = (name or "auto").split(":", 1)[0]
    if base in BACKENDS:
        return
    if base in OTHER_BACKENDS:
        raise ValueError(f"{where}: the {base!r} structured-outputs backend is not built into cserve, which has "
                         "xgrammar and guidance (auto, xgrammar, guidance)")
    raise ValueError(f"{where}: unknown structured-outputs backend {name!r}; choose auto, xgrammar or guidance")


def guidance_library() -> str:
    """The llguidance wheel's library, which exports llguidance's C API ("" when it is not
    installed). Found without importing the Python module."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("llguidance")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder).glob("_lib*.so")):
            return str(lib)
    return ""


def guidance_source(so: "StructuredOutputsParams", config: StructuredOutputsConfig) -> tuple[str, str]:
    """(kind, source) of a constraint for llguidance: json (with its whitespace options in
    "x-guidance"), regex or lark; GrammarError for what it does not take (structural tags)."""
    kind = so.kind()
    if kind in ("json", "json_object"):
        schema = json.loads(_schema_text(so.json, "json")) if kind == "json" else {"type": "object"}
        options = {"whitespace_flexible": not (so.disable_any_whitespace or config.disable_any_whitespace)}
        if so.whitespace_pattern:
            options["whitespace_pattern"] = so.whitespace_pattern
        return "json", json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)
    if kind == "regex":
        return "regex", so.regex
    if kind == "choice":
        return "lark", "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(so.choice))
    if kind == "grammar":
        return "lark", so.grammar
    raise GrammarError("structural tags need the xgrammar backend.", "structural_tag")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, without recursion (a hostile schema may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError) as e:
            raise GrammarError(f"{param} is not valid JSON: {e}", param) from None
    if schema is True:
        schema = {}
    if schema is False:
        raise GrammarError(f"{param} is the schema false, which no output satisfies.", param)
    if not isinstance(schema, dict):
        raise GrammarError(f"{param} must be a JSON schema object, got {type(schema).__name__}.", param)
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep.", param)
    try:
        return json.dumps(schema, ensure_ascii=False)
    except (ValueError, RecursionError) as e:
        raise GrammarError(f"{param} cannot be encoded as JSON: {e}", param) from None


def grammar_source(so: "StructuredOutputsParams", config: StructuredOutputsConfig) -> tuple[str, Any, bool]:
    """(compiler method, its argument, any_whitespace): the one description of a constraint that
    the cache is keyed by."""
    # whitespace_pattern is a guidance/outlines option: xgrammar has none, and vLLM's xgrammar
    # backend ignores it too (disable_any_whitespace gives compact JSON).
    any_ws = not (so.disable_any_whitespace or config.disable_any_whitespace)
    kind = so.kind()
    if kind == "json":
        return "json_schema", _schema_text(so.json, "json"), any_ws
    if kind == "json_object":
        return "json_schema", '{"type": "object"}', any_ws
    if kind == "regex":
        if not isinstance(so.regex, str) or not so.regex:
            raise GrammarError("regex must be a non-empty string.", "regex")
        return "regex", so.regex, any_ws
    if kind == "choice":
        if not isinstance(so.choice, list) or not so.choice or not all(isinstance(c, str) for c in so.choice):
            raise GrammarError("choice must be a non-empty list of strings.", "choice")
        return "choice", list(dict.fromkeys(so.choice)), any_ws
    if kind == "grammar":
        if not isinstance(so.grammar, str) or not so.grammar.strip():
            raise GrammarError("grammar must be a non-empty string.", "grammar")
        # xgrammar's EBNF (GBNF) defines rules with ::=; without one it is a Lark grammar.
        return ("ebnf" if "::=" in so.grammar else "lark"), so.grammar, any_ws
    tag = so.structural_tag
    if isinstance(tag, (dict, list)):
        tag = json.dumps(tag, ensure_ascii=False)
    if not isinstance(tag, str) or not tag:
        raise GrammarError("structural_tag must be a JSON object.", "structural_tag")
    return "structural_tag", tag, any_ws


def grammar_vocab(tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> dict[str, Any]:
    """The tokenizer as the grammar compiler reads it."""
    size = min(tokenizer.get_vocab_size(), vocab_size)
    # Special tokens are no text for the grammar (an empty spelling makes them unusable): the
    # output skips them, so "<s>" must not count as three characters of a JSON string. EOS
    # stays reachable as a stop token id.
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    encoded = [("" if i in special else tokenizer.id_to_token(i) or "") for i in range(size)]
    encoded += [""] * (vocab_size - size)
    return {"encoded_vocab": encoded, "tokenizer_json": tokenizer.to_str(), "vocab_size": vocab_size,
            "stop_token_ids": [int(t) for t in stop_token_ids]}


def local_compiler(vocab: dict[str, Any], guidance: bool = True) -> Any:
    """A _core.GrammarCompiler in this process: reads back what the worker process compiled
    (and builds llguidance matchers)."""
    from cserve import _core

    return _core.GrammarCompiler(vocab["encoded_vocab"], vocab["tokenizer_json"], vocab["vocab_size"],
                                 vocab["stop_token_ids"], guidance_library() if guidance else "")


class GrammarService:
    """Compiles constraints for one model's tokenizer. Thread-safe; compile() blocks, so async
    callers run it on a worker thread."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 config: Optional[StructuredOutputsConfig] = None) -> None:
        self.config = config or StructuredOutputsConfig()
        self._tokenizer = tokenizer
        self._vocab_size = int(vocab_size)
        self._stop = [int(t) for t in stop_token_ids]
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._cache_bytes = 0
        self._inflight: dict[tuple, Future] = {}
        # Compiles wait on the worker process here, never on the event loop or the tokenizer's thread.
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="cserve-grammar")
        self._local: Any = None  # _core.GrammarCompiler: reads back what the worker compiled
        self._worker: Optional[CompileWorker] = None

    def _vocab(self) -> dict[str, Any]:
        return grammar_vocab(self._tokenizer, self._vocab_size, self._stop)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._local is not None:
                return
            v = self._vocab()
            self._local = local_compiler(v)
            self._worker = CompileWorker(v)

    def compile(self, so: "StructuredOutputsParams") -> Any:
        """The compiled grammar (a _core.CompiledGrammar); GrammarError for a constraint that is
        invalid, cannot be compiled, or takes longer than compile_timeout."""
        backend = (so.backend or self.config.backend).split(":", 1)[0]
        if backend == "guidance":
            kind, source = guidance_source(so, self.config)
            return self._cached(("guidance", kind, source), lambda: self._compile_guidance(kind, source, so.kind()))
        method, source, any_ws = grammar_source(so, self.config)
        key = (method, json.dumps(source) if isinstance(source, list) else source, any_ws)
        try:
            return self._cached(key, lambda: self._compile_miss(method, source, any_ws, so.kind()))
        except GrammarError as e:
            # auto: what xgrammar cannot compile (or not in time) goes to llguidance, as vLLM falls back.
            if backend != "auto" or so.disable_fallback or self.config.disable_fallback or so.kind() == "structural_tag":
                raise
            self._ensure_started()
            if not self._local.has_guidance:
                raise
            kind, gsource = guidance_source(so, self.config)
            try:
                return self._cached(("guidance", kind, gsource),
                                    lambda: self._compile_guidance(kind, gsource, so.kind()))
            except GrammarError as fallback:
                raise GrammarError(f"{e} (the guidance backend could not compile it either: {fallback})",
                                   e.param) from None

    def _cached(self, key: tuple, build) -> Any:
        """The grammar for `key` from the cache, from a compile of it already under way, or built."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pending = self._inflight.get(key)
            owner = pending is None
            if owner:
                pending = self._inflight[key] = Future()
        if not owner:
            return pending.result()  # the same source is being compiled for another request
        try:
            grammar = build()
            if not grammar.allows_a_first_token():
                raise GrammarError("the constraint cannot be satisfied: no token of this model's vocabulary can "
                                   "start its text")
            pending.set_result(grammar)
            self._remember(key, grammar)
            return grammar
        except BaseException as e:
            pending.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _compile_guidance(self, kind: str, source: str, what: str) -> Any:
        """llguidance builds its lexer lazily and bounds its own work (fuel limits), so its
        matchers are made here, on the service's thread, not in the worker process."""
        self._ensure_started()
        try:
            return self._local.guidance(kind, source)
        except (ValueError, NotImplementedError) as e:  # NotImplementedError: llguidance is unavailable
            raise GrammarError(f"Invalid {what} for the guidance backend: {str(e).strip()}", what) from None

    async def compile_async(self, so: "StructuredOutputsParams") -> Any:
        return await asyncio.wrap_future(self._threads.submit(self.compile, so))

    def _compile_miss(self, method: str, source: Any, any_ws: bool, kind: str) -> Any:
        self._ensure_started()
        timeout = self.config.compile_timeout
        try:
            reply = self._worker.compile(method, source, any_ws, timeout)
        except CompileTimeout:
            raise GrammarError(f"The {kind} constraint did not compile within {timeout:g} s; simplify it.",
                               kind) from None
        if "error" in reply:
            raise GrammarError(reply["error"], kind)
        return self._local.deserialize(reply["grammar"])

    def _remember(self, key: tuple, grammar: Any) -> None:
        size = grammar.memory_bytes
        with self._lock:
            if size > self.config.cache_bytes or key in self._cache:
                return
            self._cache[key] = grammar
            self._cache_bytes += size
            while self._cache_bytes > self.config.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.memory_bytes

    def serialize(self, grammar: Any) -> str:
        """A compiled xgrammar grammar as text, for another process with the same vocabulary
        (ValueError for an llguidance matcher, which has no such form)."""
        self._ensure_started()
        return self._local.serialize(grammar)

    def start_after(self, parser: Any) -> list[int]:
        """Token ids after which the grammar applies: the end marker of the reasoning that
        `parser` (a reasoning parser for this request) expects; [] for no reasoning, or when the
        config lets the grammar apply inside the reasoning."""
        if parser is None or self.config.enable_in_reasoning:
            return []
        marker = parser.reasoning_end_marker()
        if not marker:
            return []
        return list(self._tokenizer.encode(marker, add_special_tokens=False).ids)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._worker is not None:
            self._worker.close()
