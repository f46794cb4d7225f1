"""vLLM's speculative_config (--speculative-config JSON, LLM(speculative_config={...})) resolved into
the engine's fields, with vLLM's defaults and checks, plus cserve's own auto_disable key. The
"ngram" method (prompt lookup) and "draft_model" (a smaller model of the same vocabulary, with
greedy drafts) are built, and "eagle" / "eagle3" (an EAGLE-1 or EAGLE-3 head, in vLLM's checkpoint
format, over a Llama-family target); every other method is refused by name. A draft model is a config.json
directory or a .gguf file; it computes in the target's dtype (as vLLM's draft) with its weights in
their own format (the checkpoint's quantization_config, the GGUF file's types), and `quantization`
names that format as --quantization does the target's ("fp8" quantizes a float draft at load).

Only the standard library here: `cserve serve --help` imports it.
"""

from __future__ import annotations

from typing import Any, Optional

SUPPORTED_METHODS = ("ngram", "draft_model", "eagle", "eagle3")
# cserve's own key (vLLM has no such rule): verify drafts only while the measured step times and
# acceptance say they raise the output tokens per second (default true; false: always, as vLLM).
AUTO_DISABLE_KEY = "auto_disable"
# vLLM's other methods: refused by name.
OTHER_METHODS = ("medusa", "mlp_speculator", "mtp", "suffix", "ngram_gpu",
                 "custom_class", "extract_hidden_states", "dflash", "dspark")
_METHOD_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
               "disable_by_batch_size", "quantization", "draft_tensor_parallel_size", AUTO_DISABLE_KEY)
# Other keys of vLLM's SpeculativeConfig: refused unless left at their default.
_OTHER_KEYS = {
    "enforce_eager": None, "tensor_parallel_size": None,
    "moe_backend": None, "attention_backend": None, "kv_cache_dtype": None, "max_model_len": None, "revision": None,
    "code_revision": None, "disable_padded_drafter_batch": False,
    "disable_logprobs": None, "rejection_sample_method": "standard", "draft_sample_method": "greedy",
    "parallel_drafting": False, "use_local_argmax_reduction": False, "speculative_token_tree": None,
}


def _positive_int(config: dict, key: str, low: int) -> Optional[int]:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"speculative_config: {key} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"speculative_config: {key} must be >= {low}, got {value}")
    return value


def method_of(config: dict) -> str:
    """The method vLLM infers: `method`, else "ngram" for model "ngram" / "[ngram]", else "draft_model"."""
    method = config.get("method")
    model = config.get("model")
    if method is None and isinstance(model, str) and "eagle-" in model.lower():
        method = "eagle"  # vLLM's detection by name: yuhuili/EAGLE-LLaMA3-Instruct-8B
    elif method is None and isinstance(model, str) and "eagle3" in model.lower():
        method = "eagle3"  # yuhuili/EAGLE3-LLaMA3.1-Instruct-8B
    if method is None:
        method = "ngram" if model in ("ngram", "[ngram]") else "draft_model"
    if method == "[ngram]":
        method = "ngram"
    if isinstance(method, str) and method.endswith("_mtp"):
        method = "mtp"  # vLLM folds the model-specific MTP names into "mtp"
    return method


def speculative_fields(config: Any) -> dict:
    """EngineConfig fields (speculative_method, num_speculative_tokens, prompt_lookup_min/max or
    speculative_model) of vLLM's
    speculative_config; {} when speculation is off (None or an empty object). Raises ValueError for a
    value vLLM refuses too and NotImplementedError for a method or option cserve has not built."""
    if not config:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"speculative_config must be a JSON object, got {config!r}")
    unknown = sorted(k for k in config if k not in _METHOD_KEYS and k not in _OTHER_KEYS)
    if unknown:
        raise ValueError(f"speculative_config: unknown key(s) {', '.join(unknown)}")
    method = method_of(config)
    if config.get("method") is None and config.get("model") is None:
        if config.get("num_speculative_tokens") is not None:
            raise ValueError("num_speculative_tokens was provided but without speculative model.")
    if method not in SUPPORTED_METHODS:
        raise NotImplementedError(f"speculative decoding method '{method}' is not supported yet "
                                  "(supported: ngram, draft_model, eagle, eagle3)")
    for key, default in _OTHER_KEYS.items():
        if key in config and config[key] != default:
            raise NotImplementedError(f"speculative_config: {key}={config[key]!r} is not supported yet")
    k = _positive_int(config, "num_speculative_tokens", 1)
    if k is None:
        raise ValueError(f"speculative_config: num_speculative_tokens must be provided with the {method} method")
    common = _common_fields(config)
    if method in ("eagle", "eagle3"):
        return {**_eagle_fields(config, method), "num_speculative_tokens": k, **common}
    if method == "draft_model":
        model = config.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("speculative_config: the draft_model method needs a draft model path in 'model'")
        for key in ("prompt_lookup_min", "prompt_lookup_max"):
            if key in config:
                raise ValueError(f"speculative_config: {key} applies to the ngram method, not draft_model")
        draft_tp = _positive_int(config, "draft_tensor_parallel_size", 1)
        if draft_tp not in (None, 1):
            raise NotImplementedError(f"speculative_config: draft_tensor_parallel_size={draft_tp} is not supported "
                                      "yet (the draft model runs on one device)")
        quantization = config.get("quantization")
        if quantization is not None and (not isinstance(quantization, str) or not quantization):
            raise ValueError(f"speculative_config: quantization must be a method name, got {quantization!r}")
        return {"speculative_method": "draft_model", "speculative_model": model, "num_speculative_tokens": k,
                "speculative_quantization": quantization or "", **common}
    low = _positive_int(config, "prompt_lookup_min", 1)
    high = _positive_int(config, "prompt_lookup_max", 1)
    if low is None and high is None:
        low = high = 5  # vLLM's defaults
    elif low is None:
        low = high
    elif high is None:
        high = low
    if low > high:
        raise ValueError(f"prompt_lookup_min={low} must be <= prompt_lookup_max={high}")
    return {"speculative_method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": low,
            "prompt_lookup_max": high, **common}


def _eagle_fields(config: dict, method: str) -> dict:
    """An EAGLE head (a config.json + safetensors directory in vLLM's format) for a Llama-family
    target; chain drafts only (no token tree), on one device, in the target's dtype."""
    model = config.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"speculative_config: the {method} method needs the EAGLE head's directory in 'model'")
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        if key in config:
            raise ValueError(f"speculative_config: {key} applies to the ngram method, not {method}")
    if config.get("quantization") is not None:
        raise NotImplementedError(f"speculative_config: quantization of an {method} head is not supported yet")
    head_tp = _positive_int(config, "draft_tensor_parallel_size", 1)
    if head_tp not in (None, 1):
        raise NotImplementedError(f"speculative_config: draft_tensor_parallel_size={head_tp} is not supported "
                                  f"yet (the {method} head runs on one device)")
    return {"speculative_method": method, "speculative_model": model}


def _common_fields(config: dict) -> dict:
    """The keys every method shares: disable_by_batch_size and cserve's auto_disable."""
    by_batch = config.get("disable_by_batch_size")
    if by_batch is not None and (isinstance(by_batch, bool) or not isinstance(by_batch, int)):
        raise ValueError(f"speculative_config: disable_by_batch_size must be an integer, got {by_batch!r}")
    if by_batch is not None and by_batch < 2:
        raise ValueError("Expect the batch size threshold of disabling speculative decoding is > 1, but got "
                         f"disable_by_batch_size={by_batch}")
    auto = config.get(AUTO_DISABLE_KEY, True)
    if not isinstance(auto, bool):
        raise ValueError(f"speculative_config: {AUTO_DISABLE_KEY} must be true or false, got {auto!r}")
    return {"speculative_disable_by_batch_size": by_batch or 0, "speculative_auto_disable": auto}
