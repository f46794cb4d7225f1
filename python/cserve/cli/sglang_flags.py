"""The SGLang dialect of `cserve serve` (`--backend sglang`): every flag of SGLang's `launch_server`
that iChat's worker passes, declared once with SGLang's name, aliases, dest (ServerArgs' field), type
and default, and what cserve does with it: the same support rules as the vLLM table in flags.py.

A flag cserve honours names the vLLM flags its value lands on (`to`); the parser
(cserve.cli.sglang_args) builds the vLLM dialect's namespace from them, so the server downstream reads
one namespace whichever dialect the command line used. `convert(value, ns)` returns {vLLM dest: value}
where the mapping is more than a copy (ns: the whole SGLang namespace).

Only the standard library here: `cserve serve --backend sglang --help` must be instant.
"""

from __future__ import annotations

import os
from dataclasses import replace

from cserve.cli.flags import (
    FLAG, FLOAT, INT, LIST, LIST_FLOAT, LIST_INT, ONLY, STR, SUPPORTED, Flag, Range, noop,
)

# cserve's KV block size when --page-size is unset (EngineConfig.block_size).
DEFAULT_BLOCK_SIZE = 16
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)


class SGLangValueError(ValueError):
    """A value of an honoured flag that cserve cannot take; the message is one line."""


def to(*names: str, convert=None) -> dict:
    """Honoured: the value lands on these vLLM flags (copied to the one flag's dest, or by convert)."""
    return {"support": SUPPORTED, "to": names, "convert": convert}


def only_to(*values, names: tuple = (), convert=None, notes: tuple = ()) -> dict:
    """Only these values work (the rest are refused); they land on `names` like to()."""
    return {"support": ONLY, "accepted": values, "to": names, "convert": convert, "value_notes": notes}


def _group(name: str, *flags: Flag) -> tuple:
    return tuple(replace(f, group=name) for f in flags)


# --- conversions ---------------------------------------------------------------------------------------

def _load_balance_method(value, ns) -> dict:
    return {"data_parallel_load_balance": {"shortest_queue": "least_loaded"}.get(value, value)}


def _model_override_args(value, ns) -> dict:
    import json

    try:
        overrides = json.loads(value or "{}")
    except ValueError as e:
        raise SGLangValueError(f"--json-model-override-args: not JSON ({e})") from None
    if not isinstance(overrides, dict):
        raise SGLangValueError("--json-model-override-args must be a JSON object")
    return {"hf_overrides": overrides}


# SGLang's --speculative-algorithm -> the speculative_config method (vLLM's names). NEXTN is SGLang's
# name of multi-token prediction (vLLM's "mtp"); the config's validation refuses the methods not built.
SGLANG_SPECULATIVE_METHODS = {"NGRAM": "ngram", "STANDALONE": "draft_model", "EAGLE": "eagle", "EAGLE3": "eagle3",
                              "NEXTN": "mtp"}
# SGLang's defaults: NGRAM verifies --speculative-num-draft-tokens (default: the longest match window,
# 12) including the last verified token and matches windows of 1 to 12 tokens; a draft model with
# top-k 1 runs 3 steps (4 draft tokens).
SGLANG_NGRAM_DRAFT_TOKENS, SGLANG_NGRAM_WINDOW = 12, (1, 12)
SGLANG_DRAFT_STEPS = 3


def speculative_config_of(ns) -> dict | None:
    """vLLM's speculative_config for SGLang's --speculative-* flags (None when no algorithm is set).
    Top-k 1 only: each verification checks a chain of num_steps drafts, num_draft_tokens - 1 of them
    (SGLang's count includes the last verified token) when only that is given."""
    algorithm = ns.speculative_algorithm
    if algorithm is None:
        return None
    method = SGLANG_SPECULATIVE_METHODS[algorithm]
    steps, draft_tokens = ns.speculative_num_steps, ns.speculative_num_draft_tokens
    if draft_tokens is not None and draft_tokens < 2:
        raise SGLangValueError(f"--speculative-num-draft-tokens {draft_tokens}: must be >= 2 (the last verified "
                               "token and at least one draft)")
    if steps is not None and steps < 1:
        raise SGLangValueError(f"--speculative-num-steps {steps}: must be >= 1")
    if method == "ngram":  # SGLang's NGRAM verifies num_draft_tokens; it has no draft steps
        num_drafts = (draft_tokens or SGLANG_NGRAM_DRAFT_TOKENS) - 1
    else:  # with top-k 1 SGLang sets num_draft_tokens to num_steps + 1
        num_drafts = steps if steps is not None else draft_tokens - 1 if draft_tokens is not None \
            else SGLANG_DRAFT_STEPS
    config = {"method": method, "num_speculative_tokens": num_drafts}
    if method == "ngram":
        config["prompt_lookup_min"], config["prompt_lookup_max"] = SGLANG_NGRAM_WINDOW
    else:
        if ns.speculative_draft_model_path is None and method == "draft_model":
            raise SGLangValueError("--speculative-algorithm STANDALONE needs --speculative-draft-model-path")
        if ns.speculative_draft_model_path is not None:
            config["model"] = ns.speculative_draft_model_path
    return config


def _speculative(value, ns) -> dict:
    from cserve.cli.speculative_config import speculative_fields

    config = speculative_config_of(ns)
    try:
        speculative_fields(config)
    except (NotImplementedError, ValueError) as e:
        raise SGLangValueError(f"--speculative-algorithm {ns.speculative_algorithm}: {e}") from None
    return {"speculative_config": config}


def _served_model_name(value, ns) -> dict:
    return {"served_model_name": None if value is None else [value]}


def _chat_template(value, ns) -> dict:
    if value is None or "{" in value:
        return {"chat_template": value}
    if value.endswith(".json"):
        raise SGLangValueError(f"--chat-template {value}: SGLang's JSON chat templates are not supported yet; "
                               "pass a Jinja template file")
    if not os.path.exists(value):
        raise SGLangValueError(f"--chat-template {value}: no such file, and SGLang's built-in chat template "
                               "names are not supported yet; pass a Jinja template file")
    return {"chat_template": value}


def _kv_cache_dtype(value, ns) -> dict:
    return {"kv_cache_dtype": "bfloat16" if value in ("bf16", "bfloat16") else value}


def _device(value, ns) -> dict:
    device = "auto" if value is None else value
    if ns.base_gpu_id and device in ("auto", "cuda"):
        device = f"cuda:{ns.base_gpu_id}"
    return {"device": device}


def _base_gpu_id(value, ns) -> dict:
    return _device(ns.device, ns)


# SGLang's parser names -> the same parsers under vLLM's names (cserve.parsers); names without an
# equivalent here are refused by name.
SGLANG_REASONING_PARSERS = {
    "deepseek-r1": "deepseek_r1", "deepseek-v3": "deepseek_v3", "qwen3": "qwen3",
    "qwen3-thinking": "deepseek_r1",  # always thinks; the template opens <think>
    "kimi_k2": "kimi_k2", "gpt-oss": "openai_gptoss", "glm45": "glm45", "step3": "step3",
    "minimax": "minimax_m2", "minimax-append-think": "minimax_m2_append_think", "mistral": "mistral",
}
SGLANG_TOOL_PARSERS = {
    "llama3": "llama3_json", "mistral": "mistral", "qwen": "hermes", "qwen25": "hermes",
    "qwen3_coder": "qwen3_coder", "deepseekv3": "deepseek_v3", "deepseekv31": "deepseek_v31",
    "pythonic": "pythonic", "kimi_k2": "kimi_k2", "glm": "glm45", "glm45": "glm45", "minimax-m2": "minimax_m2",
    "gpt-oss": "openai",
}


def _parser(value, table: dict, flag: str):
    if value is None:
        return None
    if value not in table:
        raise SGLangValueError(f"{flag} {value}: not supported yet (supported: {', '.join(sorted(table))})")
    return table[value]


def _reasoning_parser(value, ns) -> dict:
    return {"reasoning_parser": _parser(value, SGLANG_REASONING_PARSERS, "--reasoning-parser") or ""}


def _tool_call_parser(value, ns) -> dict:
    # In SGLang the parser alone turns on tool calls for tool_choice "auto".
    name = _parser(value, SGLANG_TOOL_PARSERS, "--tool-call-parser")
    return {"tool_call_parser": name, "enable_auto_tool_choice": name is not None}


def _chunked_prefill_size(value, ns) -> dict:
    # SGLang: a size <= 0 turns chunked prefill off (-1 by convention).
    if value is None:
        return {}
    if value <= 0:
        return {"enable_chunked_prefill": False}
    return {"enable_chunked_prefill": True, "max_num_batched_tokens": value}


def _max_total_tokens(value, ns) -> dict:
    if value is None:
        return {}
    block = ns.page_size or DEFAULT_BLOCK_SIZE
    return {"num_gpu_blocks_override": -(-value // block)}


def _schedule_policy(value, ns) -> dict:
    return {"scheduling_policy": "fcfs"}


def _radix_cache(value, ns) -> dict:
    # SGLang's radix cache is on unless disabled: prefix caching is on by default in this dialect.
    return {"enable_prefix_caching": not value}


def _log_level(value, ns) -> dict:
    out = {"log_level": value}
    if ns.log_level_http is None:
        out["uvicorn_log_level"] = value
    return out


def _log_level_http(value, ns) -> dict:
    return {} if value is None else {"uvicorn_log_level": value}


def _log_requests_level(value, ns) -> dict:
    # SGLang: 0 metadata, 1 and sampling parameters, 2 and inputs/outputs cut at 2048 characters, 3 all.
    return {"enable_log_outputs": value >= 2, "max_log_len": {0: 0, 1: 0, 2: 2048}.get(value)}


# --- the table ------------------------------------------------------------------------------------------

SGLANG_GROUPS = {
    "ModelAndPort": "Which model, its tokenizer and how it is loaded; the HTTP server's address.",
    "MemoryAndScheduling": "KV cache memory and the token budget of each step.",
    "RuntimeOptions": "Parallelism, streaming, seeds, timeouts, GPUs.",
    "Logging": "Log levels, request logging, metrics.",
    "API": "The HTTP API: key, usage reports, parsers.",
    "DataParallelism": "Data parallel replicas.",
    "MultiNode": "Multi-node distributed serving.",
    "ModelOverride": "Model config overrides and preferred sampling parameters.",
    "LoRA": "LoRA adapters.",
    "KernelBackend": "Attention, sampling and grammar backends.",
    "SpeculativeDecoding": "Speculative decoding.",
    "ExpertParallelism": "Expert parallelism and MoE kernels.",
    "DoubleSparsity": "Double sparsity attention.",
    "OptimizationDebug": "Prefix (radix) cache, CUDA graphs, overlap scheduling, torch.compile, hierarchical "
                         "cache, debugging.",
    "Disaggregation": "Prefill/decode disaggregation.",
    "WeightUpdate": "Weight loading and updates.",
}

# Shown by a plain `--backend sglang --help`.
SGLANG_COMMON = (
    "--model-path", "--host", "--port", "--api-key", "--served-model-name", "--context-length", "--dtype",
    "--mem-fraction-static", "--max-running-requests", "--max-total-tokens", "--chunked-prefill-size",
    "--page-size", "--disable-radix-cache", "--chat-template", "--tensor-parallel-size", "--log-level",
    "--log-requests", "--backend",
)

_TP1 = "tensor parallel size is 1"
_EP = "expert parallelism is not supported yet"
_NO_FLASHINFER = "cserve does not use FlashInfer"
_NO_TORCH_COMPILE = "cserve does not use torch.compile"
_NO_MM = "cserve has no multimodal encoder"
_HICACHE = "the hierarchical cache is not supported yet"
_PD = "prefill/decode disaggregation is not supported yet"
_DS = "double sparsity is not supported yet"
_DUMP = "tensor dumps are not supported yet"
_SPEC = "EAGLE's draft vocabulary and verification graphs are not built yet"
# The --speculative-* flags SGLang's speculation reads: all of them make one speculative_config.
_SPEC_TO = to("--speculative-config", convert=_speculative)

SGLANG_FLAGS: tuple = (
    *_group(
        "ModelAndPort",
        Flag("--model-path", STR, None, "The model: a local directory, a .gguf file or a Hugging Face repo id "
             "(required).", aliases=("--model",), **to("--model")),
        Flag("--tokenizer-path", STR, None, "The tokenizer: a local directory or a Hugging Face repo id; the "
             "model's when unset.", **to("--tokenizer")),
        Flag("--host", STR, "127.0.0.1", "Host of the HTTP server.", **to("--host")),
        Flag("--port", INT, 30000, "Port of the HTTP server.", check=Range(0, 65535), **to("--port")),
        Flag("--nccl-port", INT, None, "Port of the NCCL distributed environment (random when unset).",
             **noop(_TP1 + ": there is no NCCL group")),
        Flag("--tokenizer-mode", STR, "auto", "auto uses the fast tokenizer when there is one; slow always uses "
             "the slow one.", choices=("auto", "slow"), **only_to("auto", names=("--tokenizer-mode",))),
        Flag("--skip-tokenizer-init", FLAG, False, "Skip the tokenizer: requests pass input_ids and get token ids "
             "back.", **to("--skip-tokenizer-init")),
        Flag("--skip-server-warmup", FLAG, False, "Skip the warmup request.",
             **noop("cserve warms the engine up while it loads, without a request")),
        Flag("--load-format", STR, "auto", "Format of the model weights.",
             choices=("auto", "pt", "safetensors", "npcache", "dummy", "sharded_state", "gguf", "bitsandbytes",
                      "layered", "remote", "mistral"),
             **only_to("auto", "safetensors", "gguf", "dummy", names=("--load-format",))),
        Flag("--model-loader-extra-config", STR, "{}", "Extra configuration of the model loader (JSON)."),
        Flag("--trust-remote-code", FLAG, False, "Allow custom model code from the Hub.",
             **noop("cserve never runs code from the checkpoint")),
        Flag("--dtype", STR, "auto", "Data type of weights and activations; auto: float16 for float16 "
             "checkpoints, else bfloat16.", choices=("auto", "half", "float16", "bfloat16", "float", "float32"),
             **to("--dtype")),
        Flag("--kv-cache-dtype", STR, "auto", "KV cache data type; auto follows the model's. fp8 needs the CUDA "
             "backend.", choices=("auto", "fp8_e5m2", "fp8_e4m3", "bf16", "bfloat16", "fp4_e2m1"),
             **only_to("auto", "fp8_e5m2", "fp8_e4m3", "bf16", "bfloat16", names=("--kv-cache-dtype",),
                       convert=_kv_cache_dtype)),
        Flag("--quantization", STR, None, "Quantization method; read from the model when unset. cserve: gguf.",
             **only_to(None, "gguf", names=("--quantization",))),
        Flag("--quantization-param-path", STR, None, "JSON file with KV cache scaling factors."),
        Flag("--context-length", INT, None, "Context length (prompt and output); the model's config.json when "
             "unset.", check=Range(1), **to("--max-model-len")),
        Flag("--device", STR, None, "Device: cuda, cpu, ...; detected when unset (--base-gpu-id picks the GPU).",
             **only_to(None, "auto", "cuda", "cpu", names=("--device",), convert=_device)),
        Flag("--served-model-name", STR, None, "The model name the API reports (v1/models); --model-path when "
             "unset.", **to("--served-model-name", convert=_served_model_name)),
        Flag("--chat-template", STR, None, "Chat template: a Jinja file (or the template itself). SGLang's "
             "built-in template names and JSON templates are refused.",
             **to("--chat-template", convert=_chat_template)),
        Flag("--completion-template", STR, None, "Built-in completion (code fill-in) template name or file."),
        Flag("--is-embedding", FLAG, False, "Serve a CausalLM as an embedding model."),
        Flag("--enable-multimodal", FLAG, None, "Enable the model's multimodal inputs."),
        Flag("--revision", STR, None, "Model revision (branch, tag or commit) on the Hugging Face Hub.",
             **to("--revision")),
        Flag("--impl", STR, "auto", "Which model implementation: auto, sglang (native) or transformers; cserve's "
             "own is the native one.", choices=("auto", "sglang", "transformers"), **only_to("auto", "sglang")),
    ),
    *_group(
        "MemoryAndScheduling",
        Flag("--mem-fraction-static", FLOAT, None, "Fraction of device memory for the weights and the KV cache "
             "(cserve: 0.9 when unset; on the CPU the fraction of available memory).",
             check=Range(0, 1, low_open=True), **to("--gpu-memory-utilization")),
        Flag("--max-running-requests", INT, None, "Most requests running at once (256 when unset).",
             check=Range(1), **to("--max-num-seqs")),
        Flag("--max-total-tokens", INT, None, "KV cache size in tokens (from the memory fraction when unset); "
             "rounded up to whole pages of --page-size tokens.", check=Range(1),
             **to("--num-gpu-blocks-override", convert=_max_total_tokens)),
        Flag("--chunked-prefill-size", INT, None, "Most tokens of a prefill chunk, the token budget of a step "
             "(8192 when unset); -1 turns chunked prefill off.",
             **to("--max-num-batched-tokens", "--enable-chunked-prefill", convert=_chunked_prefill_size)),
        Flag("--max-prefill-tokens", INT, 16384, "Most tokens of a prefill batch.",
             **noop("cserve's token budget of a step, prefills and decodes together, is --chunked-prefill-size")),
        Flag("--schedule-policy", STR, "fcfs", "Order of waiting requests: fcfs, lpm (longest prefix match), "
             "dfs-weight, random, lof (longest output first). random and lof are refused: they promise an order "
             "that cserve's scheduler does not keep.",
             choices=("lpm", "random", "fcfs", "dfs-weight", "lof"),
             **only_to("fcfs", "lpm", "dfs-weight", names=("--scheduling-policy",), convert=_schedule_policy,
                       notes=(("lpm", "served as fcfs: lpm only reorders waiting requests for prefix cache hits, "
                                      "which cserve's prefix cache finds anyway; SGLang too falls back to fcfs on "
                                      "long queues"),
                              ("dfs-weight", "served as fcfs: a prefix-cache-aware order like lpm"))),
             ),
        Flag("--schedule-conservativeness", FLOAT, 1.0, "How conservatively new requests are admitted.",
             **noop("cserve admits requests by free KV blocks and preempts when they run out")),
        Flag("--cpu-offload-gb", INT, 0, "GiB of RAM to offload weights to.",
             **noop("weights stay where the backend loads them")),
        Flag("--page-size", INT, None, "Tokens per KV cache page (block); cserve's block size (16) when unset.",
             **only_to(None, *BLOCK_SIZES, names=("--block-size",))),
        Flag("--hybrid-kvcache-ratio", FLOAT, None, "Split between the uniform and hybrid KV buffers, in [0, 1].",
             **noop("cserve sizes one KV cache for all layers")),
    ),
    *_group(
        "RuntimeOptions",
        Flag("--tensor-parallel-size", INT, 1, "Tensor parallel size.", aliases=("--tp-size",), dest="tp_size",
             **to("--tensor-parallel-size")),
        Flag("--pipeline-parallel-size", INT, 1, "Pipeline parallel size.", aliases=("--pp-size",),
             dest="pp_size", **to("--pipeline-parallel-size")),
        Flag("--max-micro-batch-size", INT, None, "Most requests in a pipeline parallel micro-batch.",
             **noop("pipeline parallel size is 1")),
        Flag("--stream-interval", INT, 1, "Tokens per streamed chunk."),
        Flag("--stream-output", FLAG, False, "Stream disjoint segments instead of the text so far."),
        Flag("--random-seed", INT, None, "Random seed (a random one when unset, as SGLang draws it).",
             **to("--seed")),
        Flag("--constrained-json-whitespace-pattern", STR, None, "Regex of the whitespace allowed in JSON "
             "constrained output."),
        Flag("--watchdog-timeout", FLOAT, 300.0, "Seconds a forward batch may take before the watchdog kills "
             "the server.", **noop("cserve has no step watchdog")),
        Flag("--dist-timeout", INT, None, "Timeout of torch.distributed initialization.",
             **noop("cserve does not use torch.distributed")),
        Flag("--download-dir", STR, None, "Hugging Face download directory.", **to("--download-dir")),
        Flag("--base-gpu-id", INT, 0, "The GPU to use (the first of them).", check=Range(0),
             **to("--device", convert=_base_gpu_id)),
        Flag("--gpu-id-step", INT, 1, "Step between the GPU ids used.", **noop("one GPU per worker")),
        Flag("--sleep-on-idle", FLAG, False, "Use less CPU while idle.",
             **noop("cserve's engine thread waits on a condition variable while idle")),
    ),
    *_group(
        "Logging",
        Flag("--log-level", STR, "info", "Log level of all loggers.",
             choices=("critical", "error", "warning", "info", "debug", "trace"),
             **to("--uvicorn-log-level", convert=_log_level)),
        Flag("--log-level-http", STR, None, "Log level of the HTTP server; --log-level when unset.",
             choices=("critical", "error", "warning", "info", "debug", "trace"),
             **to("--uvicorn-log-level", convert=_log_level_http)),
        Flag("--log-requests", FLAG, False, "Log each request.", **to("--enable-log-requests")),
        Flag("--log-requests-level", INT, 0, "Detail of request logs: 0 metadata, 1 and sampling parameters, 2 and "
             "inputs/outputs cut at 2048 characters, 3 all.", choices=(0, 1, 2, 3),
             **to("--enable-log-outputs", "--max-log-len", convert=_log_requests_level)),
        Flag("--crash-dump-folder", STR, None, "Folder to dump the last 5 minutes of requests to before a crash."),
        Flag("--show-time-cost", FLAG, False, "Log the time of marked code sections.",
             **noop("cserve has no time-cost markers")),
        Flag("--enable-metrics", FLAG, False, "Serve Prometheus metrics.",
             **noop("cserve always serves Prometheus metrics at /metrics")),
        Flag("--bucket-time-to-first-token", LIST_FLOAT, None, "Histogram buckets of the time to first token.",
             **noop("cserve's histograms use vLLM's buckets")),
        Flag("--bucket-inter-token-latency", LIST_FLOAT, None, "Histogram buckets of the inter-token latency.",
             **noop("cserve's histograms use vLLM's buckets")),
        Flag("--bucket-e2e-request-latency", LIST_FLOAT, None, "Histogram buckets of the end-to-end latency.",
             **noop("cserve's histograms use vLLM's buckets")),
        Flag("--collect-tokens-histogram", FLAG, False, "Histograms of prompt and generated tokens.",
             **noop("cserve always reports vllm:request_prompt_tokens and vllm:request_generation_tokens")),
        Flag("--kv-events-config", STR, None, "KV cache event publishing configuration (JSON)."),
        Flag("--decode-log-interval", INT, 40, "Log statistics every this many decode batches.",
             **noop("cserve logs engine statistics every few seconds (--disable-log-stats in the vLLM dialect)")),
        Flag("--enable-request-time-stats-logging", FLAG, False, "Log the time statistics of each request.",
             **noop("cserve reports request latencies as Prometheus histograms")),
    ),
    *_group(
        "API",
        Flag("--api-key", STR, None, "Require this key (Authorization: Bearer).", **to("--api-key")),
        Flag("--file-storage-path", STR, "sglang_storage", "Where the file API stores files.",
             **noop("cserve has no file API")),
        Flag("--enable-cache-report", FLAG, False, "Report cached prompt tokens in usage.prompt_tokens_details.",
             **to("--enable-prompt-tokens-details")),
        Flag("--reasoning-parser", STR, None, "Parser that splits reasoning content from the answer "
             "(SGLang's names: " + ", ".join(SGLANG_REASONING_PARSERS) + ").",
             **to("--reasoning-parser", convert=_reasoning_parser)),
        Flag("--tool-call-parser", STR, None, "Parser that turns model output into tool calls for tool_choice "
             "auto (SGLang's names: " + ", ".join(SGLANG_TOOL_PARSERS) + ").",
             **to("--tool-call-parser", "--enable-auto-tool-choice", convert=_tool_call_parser)),
    ),
    *_group(
        "DataParallelism",
        Flag("--data-parallel-size", INT, 1, "Data parallel size.", aliases=("--dp-size",), dest="dp_size",
             **to("--data-parallel-size")),
        Flag("--load-balance-method", STR, "round_robin", "How requests are spread over data parallel replicas: "
             "round_robin, or shortest_queue (the replica with the fewest sequences in flight).",
             choices=("round_robin", "shortest_queue", "minimum_tokens"),
             **only_to("round_robin", "shortest_queue", names=("--data-parallel-load-balance",),
                       convert=_load_balance_method)),
    ),
    *_group(
        "MultiNode",
        Flag("--dist-init-addr", STR, None, "Address that initializes the distributed backend (host:port).",
             aliases=("--nccl-init-addr",), **noop("single node only (--nnodes is 1)")),
        Flag("--nnodes", INT, 1, "Number of nodes.", **only_to(1, names=("--nnodes",))),
        Flag("--node-rank", INT, 0, "Rank of this node.", **only_to(0, names=("--node-rank",))),
    ),
    *_group(
        "ModelOverride",
        Flag("--json-model-override-args", STR, "{}", "JSON object that overrides the model config.",
             **to("--hf-overrides", convert=_model_override_args)),
        Flag("--preferred-sampling-params", STR, None, "Sampling parameters (JSON) that /get_model_info reports.",
             **noop("cserve's /get_model_info does not report them yet")),
    ),
    *_group(
        "LoRA",
        Flag("--lora-paths", LIST, None, "LoRA adapters: name=path or paths."),
        Flag("--max-loras-per-batch", INT, 8, "Most adapters in a running batch."),
        Flag("--lora-backend", STR, "triton", "Kernel backend of multi-LoRA serving."),
    ),
    *_group(
        "KernelBackend",
        Flag("--attention-backend", STR, None, "Attention kernels; chosen automatically when unset.",
             **noop("cserve has one attention implementation per device")),
        Flag("--sampling-backend", STR, None, "Sampling kernels; chosen automatically when unset.",
             choices=("flashinfer", "pytorch"), **noop("cserve has one sampler per device")),
        Flag("--grammar-backend", STR, "xgrammar", "Backend of grammar-guided decoding.",
             choices=("xgrammar", "outlines", "llguidance", "none")),
    ),
    *_group(
        "SpeculativeDecoding",
        Flag("--speculative-algorithm", STR, None, "Speculative decoding algorithm: NGRAM (prompt lookup, "
             "vLLM's ngram method, match windows of 1 to 12 tokens), STANDALONE (a draft model, vLLM's "
             "draft_model), EAGLE / EAGLE3 (vLLM's eagle / eagle3: the head at --speculative-draft-model-path); "
             "NEXTN (vLLM's mtp) is refused.",
             choices=tuple(SGLANG_SPECULATIVE_METHODS), **_SPEC_TO),
        Flag("--speculative-draft-model-path", STR, None, "The draft model: a directory or a .gguf file of the "
             "target's vocabulary.", **_SPEC_TO),
        Flag("--speculative-num-steps", INT, None, "Draft steps per verification: the drafts per step "
             "(default 3).", **_SPEC_TO),
        Flag("--speculative-eagle-topk", INT, None, "Tokens the draft samples per step in EAGLE-2: only 1 (a "
             "chain of drafts).", **only_to(None, 1, names=("--speculative-config",), convert=_speculative)),
        Flag("--speculative-num-draft-tokens", INT, None, "Draft tokens per verification, the last verified "
             "token included: with NGRAM the drafts per step are one fewer (default 12); with a draft model "
             "it is num_steps + 1 (used when --speculative-num-steps is unset).", **_SPEC_TO),
        Flag("--speculative-accept-threshold-single", FLOAT, 1.0, "Accept a draft token whose target probability "
             "is above this (only 1.0: drafts are kept where the target drew them).", **only_to(1.0)),
        Flag("--speculative-accept-threshold-acc", FLOAT, 1.0, "Raise a draft token's acceptance probability "
             "from p to min(1, p / this) (only 1.0: drafts are kept where the target drew them).",
             **only_to(1.0)),
        Flag("--speculative-token-map", STR, None, "The draft model's small vocabulary.", **noop(_SPEC)),
        Flag("--mm-attention-backend", STR, None, "Attention backend of the multimodal encoder.",
             choices=("sdpa", "fa3", "triton_attn"), **noop(_NO_MM)),
    ),
    *_group(
        "ExpertParallelism",
        Flag("--expert-parallel-size", INT, 1, "Expert parallel size.", aliases=("--ep-size",), dest="ep_size",
             **only_to(1)),
        Flag("--enable-ep-moe", FLAG, False, "Expert parallelism for MoE layers (ep size = tp size)."),
        Flag("--enable-flashinfer-moe", FLAG, False, "FlashInfer CUTLASS MoE for modelopt_fp4 on Blackwell.",
             **noop(_NO_FLASHINFER)),
        Flag("--enable-flashinfer-allreduce-fusion", FLAG, False, "FlashInfer all-reduce fused with "
             "Add_RMSNorm.", **noop(_NO_FLASHINFER)),
        Flag("--enable-deepep-moe", FLAG, False, "DeepEP MoE for expert parallelism."),
        Flag("--deepep-mode", STR, "auto", "DeepEP mode.", choices=("normal", "low_latency", "auto"),
             **noop(_EP)),
        Flag("--ep-num-redundant-experts", INT, 0, "Redundant experts of expert parallelism.", **noop(_EP)),
        Flag("--ep-dispatch-algorithm", STR, None, "How ranks of redundant experts are chosen.",
             choices=("static", "dynamic", "fake"), **noop(_EP)),
        Flag("--init-expert-location", STR, "trivial", "Initial placement of experts.", **noop(_EP)),
        Flag("--enable-eplb", FLAG, False, "Expert parallel load balancing."),
        Flag("--eplb-algorithm", STR, "auto", "Expert parallel load balancing algorithm.", **noop(_EP)),
        Flag("--eplb-rebalance-num-iterations", INT, 1000, "Iterations between automatic rebalancing.",
             **noop(_EP)),
        Flag("--eplb-rebalance-layers-per-chunk", INT, None, "Layers rebalanced per forward pass.", **noop(_EP)),
        Flag("--expert-distribution-recorder-mode", STR, None, "Mode of the expert distribution recorder.",
             choices=("stat", "stat_approx", "per_pass", "per_token")),
        Flag("--expert-distribution-recorder-buffer-size", INT, None, "Ring buffer size of the expert "
             "distribution recorder.", **noop(_EP)),
        Flag("--enable-expert-distribution-metrics", FLAG, False, "Log expert balance metrics."),
        Flag("--deepep-config", STR, None, "Tuned DeepEP configuration.", **noop(_EP)),
        Flag("--moe-dense-tp-size", INT, None, "Tensor parallel size of the dense MLP layers of MoE models.",
             **noop(_TP1)),
    ),
    *_group(
        "DoubleSparsity",
        Flag("--enable-double-sparsity", FLAG, False, "Double sparsity attention."),
        Flag("--ds-channel-config-path", STR, None, "Channel configuration of double sparsity.", **noop(_DS)),
        Flag("--ds-heavy-channel-num", INT, 32, "Heavy channels of double sparsity.", **noop(_DS)),
        Flag("--ds-heavy-token-num", INT, 256, "Heavy tokens of double sparsity.", **noop(_DS)),
        Flag("--ds-heavy-channel-type", STR, "qk", "Heavy channel type of double sparsity.", **noop(_DS)),
        Flag("--ds-sparse-decode-threshold", INT, 4096, "Sparse decode threshold of double sparsity.",
             **noop(_DS)),
    ),
    *_group(
        "OptimizationDebug",
        Flag("--disable-radix-cache", FLAG, False, "Disable the radix (prefix) cache; it is on by default.",
             **to("--enable-prefix-caching", convert=_radix_cache)),
        Flag("--cuda-graph-max-bs", INT, None, "Largest batch size captured as a CUDA graph.", check=Range(1),
             **to("--max-cudagraph-capture-size")),
        Flag("--cuda-graph-bs", LIST_INT, None, "Batch sizes captured as CUDA graphs.",
             **to("--cudagraph-capture-sizes")),
        Flag("--disable-cuda-graph", FLAG, False, "No CUDA graphs.", **to("--enforce-eager")),
        Flag("--disable-cuda-graph-padding", FLAG, False, "No CUDA graph where a batch would need padding.",
             **noop("cserve pads a decode batch to the next captured size")),
        Flag("--enable-profile-cuda-graph", FLAG, False, "Profile CUDA graph capture.",
             **noop("cserve has no CUDA graph profiler")),
        Flag("--enable-nccl-nvls", FLAG, False, "NCCL NVLS for prefill-heavy requests.", **noop(_TP1)),
        Flag("--enable-tokenizer-batch-encode", FLAG, False, "Tokenize several texts of a request in one batch.",
             **noop("cserve's Rust tokenizer encodes each text as it arrives")),
        Flag("--disable-outlines-disk-cache", FLAG, False, "Disable the disk cache of outlines.",
             **noop("cserve does not use outlines")),
        Flag("--disable-custom-all-reduce", FLAG, False, "Use NCCL instead of the custom all-reduce.",
             **noop(_TP1 + ": there is no all-reduce")),
        Flag("--enable-mscclpp", FLAG, False, "mscclpp for small all-reduces.", **noop(_TP1)),
        Flag("--disable-overlap-schedule", FLAG, False, "Disable the overlap scheduler.",
             **noop("the engine thread schedules each step before running it")),
        Flag("--disable-overlap-cg-plan", FLAG, False, "Disable overlapped CUDA graph planning in EAGLE verify.",
             **noop(_SPEC)),
        Flag("--enable-mixed-chunk", FLAG, False, "Mix prefill chunks and decodes in a batch.",
             **noop("cserve's steps always mix prefill chunks and decodes")),
        Flag("--enable-dp-attention", FLAG, False, "Data parallel attention with tensor parallel FFN."),
        Flag("--enable-dp-lm-head", FLAG, False, "Vocabulary parallelism in the attention TP group.",
             **noop("data parallel attention is not supported yet")),
        Flag("--enable-two-batch-overlap", FLAG, False, "Overlap two micro-batches."),
        Flag("--enable-torch-compile", FLAG, False, "Optimize the model with torch.compile.",
             **noop(_NO_TORCH_COMPILE)),
        Flag("--torch-compile-max-bs", INT, 32, "Largest batch size compiled with torch.compile.",
             **noop(_NO_TORCH_COMPILE)),
        Flag("--torchao-config", STR, "", "Optimize the model with torchao (e.g. int8wo, fp8wo)."),
        Flag("--enable-nan-detection", FLAG, False, "Detect NaNs (debugging).",
             **noop("cserve has no NaN detection")),
        Flag("--enable-p2p-check", FLAG, False, "Check GPU peer-to-peer access.", **noop(_TP1)),
        Flag("--triton-attention-reduce-in-fp32", FLAG, False, "Reduce Triton attention in fp32.",
             **noop("cserve does not use Triton kernels")),
        Flag("--triton-attention-num-kv-splits", INT, 8, "KV splits of the Triton flash-decoding kernel.",
             **noop("cserve does not use Triton kernels")),
        Flag("--num-continuous-decode-steps", INT, 1, "Decode steps per scheduling.",
             **noop("the engine schedules every step; outputs are the same")),
        Flag("--delete-ckpt-after-loading", FLAG, False, "Delete the checkpoint after loading it."),
        Flag("--enable-memory-saver", FLAG, False, "Release and resume memory (memory saver)."),
        Flag("--allow-auto-truncate", FLAG, False, "Truncate prompts that are too long instead of refusing "
             "them."),
        Flag("--enable-custom-logit-processor", FLAG, False, "Accept custom logit processors in requests."),
        Flag("--enable-hierarchical-cache", FLAG, False, "Hierarchical (host memory) KV cache."),
        Flag("--hicache-ratio", FLOAT, 2.0, "Host KV cache size over the device's.", **noop(_HICACHE)),
        Flag("--hicache-size", INT, 0, "Host KV cache size in GB (overrides --hicache-ratio).", **noop(_HICACHE)),
        Flag("--hicache-write-policy", STR, "write_through_selective", "Write policy of the hierarchical cache.",
             choices=("write_back", "write_through", "write_through_selective"), **noop(_HICACHE)),
        Flag("--hicache-io-backend", STR, "", "IO backend of host/device KV transfers.",
             choices=("direct", "kernel"), **noop(_HICACHE)),
        Flag("--flashinfer-mla-disable-ragged", FLAG, False, "No ragged prefill wrapper in FlashInfer MLA.",
             **noop(_NO_FLASHINFER)),
        Flag("--disable-shared-experts-fusion", FLAG, False, "Disable shared experts fusion (DeepSeek V3/R1).",
             **noop("cserve has no shared experts fusion")),
        Flag("--disable-chunked-prefix-cache", FLAG, False, "Disable the chunked prefix cache (DeepSeek).",
             **noop("cserve has no MLA chunked prefix cache")),
        Flag("--disable-fast-image-processor", FLAG, False, "Use the base image processor.", **noop(_NO_MM)),
        Flag("--enable-return-hidden-states", FLAG, False, "Return hidden states with responses."),
        Flag("--enable-triton-kernel-moe", FLAG, False, "Triton MoE grouped GEMM kernels.",
             **noop("cserve does not use Triton kernels")),
        Flag("--warmups", STR, None, "Custom warmup functions to run before serving (comma-separated).",
             **noop("cserve has no custom warmup functions")),
        Flag("--debug-tensor-dump-output-folder", STR, None, "Folder to dump tensors to."),
        Flag("--debug-tensor-dump-input-file", STR, None, "Input file of tensor dumps."),
        Flag("--debug-tensor-dump-inject", FLAG, False, "Inject jax's outputs as each layer's inputs."),
        Flag("--debug-tensor-dump-prefill-only", FLAG, False, "Dump tensors of prefills only.", **noop(_DUMP)),
    ),
    *_group(
        "Disaggregation",
        Flag("--disaggregation-mode", STR, "null", "null, or prefill / decode for a prefill-only or decode-only "
             "server.", choices=("null", "prefill", "decode"), **only_to("null")),
        Flag("--disaggregation-transfer-backend", STR, "mooncake", "KV transfer backend of disaggregation.",
             choices=("mooncake", "nixl"), **noop(_PD)),
        Flag("--disaggregation-bootstrap-port", INT, 8998, "Bootstrap port of the prefill server.", **noop(_PD)),
        Flag("--disaggregation-decode-tp", INT, None, "Tensor parallel size of the decode servers.", **noop(_PD)),
        Flag("--disaggregation-decode-dp", INT, None, "Data parallel size of the decode servers.", **noop(_PD)),
        Flag("--disaggregation-prefill-pp", INT, 1, "Pipeline parallel size of the prefill servers.", **noop(_PD)),
        Flag("--disaggregation-ib-device", STR, None, "InfiniBand devices of disaggregated transfers.",
             **noop(_PD)),
        Flag("--num-reserved-decode-tokens", INT, 512, "Decode tokens whose memory is reserved for a new request.",
             **noop(_PD)),
        Flag("--pdlb-url", STR, None, "URL of the prefill/decode load balancer.", **noop(_PD)),
    ),
    *_group(
        "WeightUpdate",
        Flag("--custom-weight-loader", LIST, None, "Custom loaders used to update the model's weights."),
        Flag("--weight-loader-disable-mmap", FLAG, False, "Read safetensors files instead of memory-mapping them."),
    ),
)

SGLANG_BY_NAME = {f.name: f for f in SGLANG_FLAGS}
