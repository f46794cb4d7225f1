"""The offline API with vLLM's shapes: LLM(model=...).generate(prompts, sampling_params)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from cserve import _core
from cserve.engine.output_processor import RequestOutputProcessor
from cserve.outputs import CompletionOutput, Logprob, RequestOutput
from cserve.sampling_params import SamplingParams
from cserve.cli.speculative_config import speculative_fields

PromptType = Union[str, dict]

# LLM(...) keyword -> EngineConfig field, with vLLM's names.
_ENGINE_FIELDS = {
    "dtype", "load_format", "quantization", "seed", "block_size", "enable_prefix_caching", "prefix_caching_hash_algo",
    "gpu_memory_utilization", "kv_cache_memory_bytes", "num_gpu_blocks_override", "kv_cache_dtype",
    "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "long_prefill_token_threshold",
    "max_num_partial_prefills", "max_long_partial_prefills", "scheduling_policy", "max_logprobs",
    "disable_sliding_window", "max_model_len", "device", "enforce_eager", "cudagraph_capture_sizes",
    "max_cudagraph_capture_size", "tensor_parallel_size", "pipeline_parallel_size", "disable_custom_all_reduce",
    "hf_overrides", "hf_config_path", "speculative_method", "speculative_model", "speculative_quantization",
    "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "speculative_disable_by_batch_size",
    "speculative_auto_disable",
}


# vLLM keywords whose default (or any value) needs nothing from the CPU engine:
# cserve never runs model code from the checkpoint, and the CPU backend is always eager.
_ACCEPTED_AS_IS = {"trust_remote_code", "disable_log_stats", "swap_space", "tokenizer_mode",
                   "cpu_offload_gb"}
# vLLM keywords that cserve supports only at their default value so far.
_ONLY_DEFAULT = {"data_parallel_size": 1}


def _check_unsupported(options: dict[str, Any]) -> None:
    for name in list(options):
        if name in _ACCEPTED_AS_IS:
            options.pop(name)
        elif name in _ONLY_DEFAULT:
            value = options.pop(name)
            default = _ONLY_DEFAULT[name]
            if value != default:
                raise NotImplementedError(f"{name}={value!r} is not supported yet")


def _engine_config(model: str, options: dict[str, Any]) -> _core.EngineConfig:
    config = _core.EngineConfig()
    config.model = str(model)
    options = dict(options)
    _check_unsupported(options)
    options.update(speculative_fields(options.pop("speculative_config", None)))
    for name, value in options.items():
        if name not in _ENGINE_FIELDS:
            raise TypeError(f"LLM() got an unexpected keyword argument '{name}'")
        if value is None:
            continue
        if name == "hf_overrides" and not isinstance(value, str):  # vLLM's dict, to the engine as JSON text
            if not isinstance(value, dict):
                raise TypeError("hf_overrides must be a dict (a callable is not supported)")
            if not value:
                continue
            value = json.dumps(value)
        setattr(config, name, str(value) if name == "hf_config_path" else value)
    _point_at_cublaslt(config.device)
    return config


def check_executor_backend(backend: Optional[str], world_size: int) -> None:
    """--distributed-executor-backend: mp (a process per rank), uni (one process: -tp 1 -pp 1) or
    ray (ranks 1..N-1 as Ray actors; needs cserve[ray]); external_launcher is not built."""
    if backend in (None, "mp"):
        return
    if backend == "ray":
        from cserve.engine.ray_executor import require_ray

        require_ray()
        return
    if backend == "uni":
        if world_size > 1:
            raise ValueError("distributed_executor_backend 'uni' runs one process, so tensor_parallel_size x "
                             f"pipeline_parallel_size must be 1 (got {world_size}); use 'mp'")
        return
    raise NotImplementedError(f"distributed_executor_backend {backend!r} is not supported yet (supported: mp, "
                              "uni, ray)")


def _log_rank_death(reason: str) -> None:
    import logging

    logging.getLogger("cserve").error("%s: the engine's next step fails", reason)


def _point_at_cublaslt(device: str) -> None:
    """The CUDA backend loads cuBLASLt with dlopen from $CSERVE_CUBLASLT or the loader path;
    a copy from NVIDIA's wheels (cserve[cuda], or torch's) is named there when one exists.
    Only where the engine will take the GPU: searching site-packages costs start-up time."""
    try:
        on_gpu = _core.resolve_device(device)[0] != "cpu"
    except (ValueError, NotImplementedError):
        return  # the engine reports a device it cannot have
    if on_gpu and not os.environ.get("CSERVE_CUBLASLT"):
        from cserve.cuda_libs import find_cublaslt

        path = find_cublaslt()
        if path:
            os.environ["CSERVE_CUBLASLT"] = path


class LLM:
    """Loads a model directory (config.json + safetensors) and generates offline."""

    def __init__(
        self,
        model: str,
        tokenizer: Optional[str] = None,
        skip_tokenizer_init: bool = False,
        num_threads: int = 0,
        **engine_options: Any,
    ) -> None:
        model, tokenizer = _resolve(model, tokenizer, engine_options)
        structured_config = engine_options.pop("structured_outputs_config", None)
        backend = engine_options.pop("distributed_executor_backend", None)
        check_executor_backend(backend, (engine_options.get("tensor_parallel_size", 1) or 1) *
                               (engine_options.get("pipeline_parallel_size", 1) or 1))
        config = _engine_config(model, engine_options)
        config.num_threads = num_threads
        if backend == "ray":
            from cserve.engine.ray_executor import start_engine_on_ray as start_engine
        else:
            from cserve.engine.tensor_parallel import start_engine

        self.engine, self._ranks = start_engine(config)
        if self._ranks is not None:
            self._ranks.watch(lambda reason: _log_rank_death(reason))
        self.model_info = self.engine.model_info()
        self._tokenizer_dir = tokenizer or model
        self._tokenizer = None if skip_tokenizer_init else _load_tokenizer(self._tokenizer_dir)
        self._ids = itertools.count()
        self._grammars = None
        if self._tokenizer is not None:
            from cserve.structured import GrammarService, StructuredOutputsConfig

            so_config = structured_config if isinstance(structured_config, StructuredOutputsConfig) else \
                StructuredOutputsConfig.from_dict(structured_config)
            self._grammars = GrammarService(self._tokenizer, self.model_info.vocab_size,
                                            list(self.model_info.eos_token_ids), so_config)

    def _with_grammar(self, sp: SamplingParams) -> SamplingParams:
        """sp with its structured_outputs compiled (the caller's object is left as it is)."""
        if sp.structured_outputs is None or sp.compiled_grammar is not None:
            return sp
        if self._grammars is None:
            raise ValueError("structured outputs need the tokenizer (skip_tokenizer_init=False)")
        return dataclasses.replace(sp, compiled_grammar=self._grammars.compile(sp.structured_outputs))

    def shutdown(self) -> None:
        """Stops the engine and, with tensor parallelism, its other ranks' processes."""
        if self.engine is not None:
            self.engine.shutdown()
        if self._ranks is not None:
            self._ranks.stop()
            self._ranks = None

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def get_tokenizer(self):
        return self._tokenizer

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Optional[Union[SamplingParams, Sequence[SamplingParams]]] = None,
        use_tqdm: bool = True,
        priority: Optional[list[int]] = None,
    ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")

        requests: dict[str, _PendingRequest] = {}
        order = []
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                text, token_ids = self._tokenize(prompt)
                rid = str(next(self._ids))
                sp = self._with_grammar(sp)
                core = sp.to_core(self.model_info.max_model_len, len(token_ids))
                self.engine.add_request(rid, token_ids, core, priority[i] if priority else 0)
                requests[rid] = _PendingRequest(rid, text, token_ids, sp, self._tokenizer)
                order.append(rid)
            progress = _progress_bar(len(order)) if use_tqdm else None
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    pending = requests[out.request_id]
                    pending.consume(out, self._tokenizer)
                    if progress is not None and pending.done() and not pending.counted:
                        pending.counted = True
                        progress.update(1)
                    if pending.stop_hit and not pending.aborted:
                        pending.aborted = True
                        self.engine.abort(out.request_id)
            if progress is not None:
                progress.close()
        except BaseException:
            for rid in order:
                self.engine.abort(rid)
            while self.engine.has_unfinished_requests():
                self.engine.step()
            raise
        return [requests[rid].result(self._tokenizer) for rid in order]

    def chat(
        self,
        messages: Union[list[dict], list[list[dict]]],
        sampling_params: Optional[Union[SamplingParams, Sequence[SamplingParams]]] = None,
        use_tqdm: bool = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
    ) -> list[RequestOutput]:
        """Generates replies to one conversation or a list of them, rendered with the model's
        chat template (or `chat_template`: a file or the template text), as vLLM's LLM.chat."""
        from cserve.tokenizer.loading import load_template

        if self._tokenizer is None:
            raise ValueError("LLM.chat needs a tokenizer (tokenizer.json in the model directory)")
        template = load_template(self._tokenizer_dir, chat_template)
        if template is None:
            raise ValueError("the model has no chat template: pass chat_template=")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conversation in conversations:
            text = template.render(list(conversation), add_generation_prompt=add_generation_prompt,
                                   continue_final_message=continue_final_message, **(chat_template_kwargs or {}))
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string or a dict, got {type(prompt).__name__}")
        if self._tokenizer is None:
            raise ValueError("this LLM has no tokenizer: pass {'prompt_token_ids': [...]} prompts")
        return prompt, self._tokenizer.encode(prompt, add_special_tokens=True).ids

    # vLLM users call these too.
    def reset_prefix_cache(self) -> bool:
        return self.engine.reset_prefix_cache()


# vLLM keywords that pick where the model comes from (cserve.model_source).
_SOURCE_FIELDS = ("revision", "tokenizer_revision", "download_dir", "hf_token")


def _resolve(model: str, tokenizer: Optional[str], options: dict[str, Any]) -> tuple[str, Optional[str]]:
    """Local paths as they are; Hugging Face repo ids through the local cache (or a download),
    as `cserve serve` resolves them."""
    source = {k: options.pop(k) for k in _SOURCE_FIELDS if k in options}
    if Path(model).exists() and (tokenizer is None or Path(tokenizer).exists()) and not any(source.values()):
        return str(model), tokenizer
    from cserve.model_source import ModelSourceError, resolve_model, resolve_tokenizer

    common = dict(download_dir=source.get("download_dir"), hf_token=source.get("hf_token"))
    try:
        path = str(resolve_model(str(model), revision=source.get("revision"), **common))
        if tokenizer is not None:
            tokenizer = str(resolve_tokenizer(tokenizer, revision=source.get("tokenizer_revision") or
                                              source.get("revision"), **common))
    except ModelSourceError as e:
        raise FileNotFoundError(str(e)) from None
    return path, tokenizer


def _progress_bar(total: int):
    """A tqdm bar over finished prompts, as vLLM shows; None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)


def _load_tokenizer(path: str):
    from cserve.tokenizer.loading import load_tokenizer

    return load_tokenizer(path)


def _to_logprobs(entry, tokenizer) -> dict[int, Logprob]:
    out: dict[int, Logprob] = {}
    for tid, lp, rank in zip(entry.token_ids, entry.logprobs, entry.ranks):
        if tid not in out:
            decoded = tokenizer.decode([tid], skip_special_tokens=False) if tokenizer is not None else None
            out[tid] = Logprob(logprob=lp, rank=rank, decoded_token=decoded)
    return out


class _PendingRequest:
    """Collects one request's outputs through the shared output processor (stop strings, finish
    reasons, n choices) and converts logprobs to vLLM's shapes."""

    def __init__(self, rid: str, prompt: Optional[str], token_ids: list[int], params: SamplingParams,
                 tokenizer) -> None:
        self.rid = rid
        self.prompt = prompt
        self.token_ids = token_ids
        self.params = params
        self.output = RequestOutputProcessor(params, tokenizer)
        self.logprobs: dict[int, list[dict[int, Logprob]]] = {i: [] for i in range(params.n)}
        self.cumulative = [0.0] * params.n
        self.stop_hit = False  # every choice met a stop string: the engine request can end
        self.aborted = False
        self.counted = False  # shown as processed in the progress bar

    def done(self) -> bool:
        return self.output.done

    def consume(self, out, tokenizer) -> None:
        delta = self.output.process(out)  # raises EngineRequestError when the engine failed it
        if delta is None:
            return
        for e in delta.logprobs:
            self.logprobs[delta.index].append(_to_logprobs(e, tokenizer))
            self.cumulative[delta.index] += e.logprobs[0]
        if self.done() and not out.finished:
            self.stop_hit = True

    def result(self, tokenizer) -> RequestOutput:
        want_lp = self.params.logprobs is not None
        outputs = [
            CompletionOutput(index=c.index, text=c.detok.text, token_ids=list(c.token_ids),
                             cumulative_logprob=self.cumulative[c.index] if want_lp else None,
                             logprobs=self.logprobs[c.index] if want_lp else None,
                             finish_reason=c.finish_reason, stop_reason=c.stop_reason)
            for c in self.output.choices
        ]
        prompt_lp = self.output.prompt_logprobs
        return RequestOutput(
            request_id=self.rid,
            prompt=self.prompt,
            prompt_token_ids=self.token_ids,
            prompt_logprobs=None if prompt_lp is None else [None] + [_to_logprobs(e, tokenizer) for e in prompt_lp],
            outputs=outputs,
            finished=True,
            num_cached_tokens=self.output.num_cached_tokens,
        )
