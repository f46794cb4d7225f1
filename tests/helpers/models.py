"""Tiny random decoder models built with transformers, saved as safetensors, and
the float32 transformers reference (the oracle) for what cserve computes on them.

Weights are re-drawn with larger scales than transformers' default init so that
the next-token distributions are peaked: near ties between the two best tokens
would make greedy comparisons meaningless.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

# Logprob tolerance against transformers in float32 (from the issue).
TOL = 1e-3

# name -> (model_type, config overrides, tie_word_embeddings)
# Across them: head sizes 8, 16, 32, 64, 128; MHA, GQA and MQA; tied and untied embeddings.
SPECS: dict[str, dict[str, Any]] = {
    # GQA 8:2, head_dim 8, untied.
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_attention_heads=8,
                  num_key_value_heads=2, tie_word_embeddings=False),
    # MHA, head_dim 64, tied.
    "llama_tied": dict(model_type="llama", hidden_size=128, intermediate_size=160, num_attention_heads=2,
                       num_key_value_heads=2, tie_word_embeddings=True, num_hidden_layers=1),
    # GQA 4:2, head_dim 16, window of 12 tokens (prompts are longer), untied.
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, sliding_window=12, tie_word_embeddings=False),
    # MQA 4:1, head_dim 32, q/k/v bias, tied.
    "qwen2": dict(model_type="qwen2", hidden_size=128, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=1, tie_word_embeddings=True),
    # MQA 2:1 with an explicit head_dim of 128 (q_proj widens 64 -> 256), q/k norm, untied.
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=128, tie_word_embeddings=False),
    # GQA 4:2, head_dim 16, every multiplier away from 1, attention and MLP biases, tied.
    "granite": dict(model_type="granite", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, embedding_multiplier=6.0, residual_multiplier=0.3,
                    attention_multiplier=0.07, logits_scaling=3.0, attention_bias=True, mlp_bias=True,
                    tie_word_embeddings=True),
    # GQA 4:2, head_dim 16, post-norms, q/k norms over the whole projection, untied.
    "olmo2": dict(model_type="olmo2", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False),
    # GQA 4:2, head_dim 16, 4 layers: the third NoPE (interval 3) with a window of 12, tied.
    "smollm3": dict(model_type="smollm3", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=4, no_rope_layer_interval=3,
                    use_sliding_window=True, sliding_window=12, tie_word_embeddings=True),
    # GQA 4:2, head_dim 16, fused qkv_proj / gate_up_proj, longrope (short factors away from 1; the
    # shared tests' sequences stay below original_max_position_embeddings, test_families_more.py
    # crosses it with phi3_long), a window of 12 on every layer, untied.
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                 num_key_value_heads=2, sliding_window=12, original_max_position_embeddings=256,
                 rope_scaling=dict(type="longrope", short_factor=[1.0, 1.3, 0.8, 2.0, 1.1, 1.7, 0.9, 3.0],
                                   long_factor=[2.0, 0.7, 4.0, 1.5, 3.0, 1.2, 6.0, 2.5]),
                 tie_word_embeddings=False),
    # Phi-4-mini's shape of longrope: partial_rotary_factor 0.5 (8 rotary dimensions
    # of 16), original_max_position_embeddings 32 of 256: a 40-token prompt uses the long factors.
    "phi3_long": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=32,
                      partial_rotary_factor=0.5,
                      rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5, 0.7, 2.5],
                                        long_factor=[3.0, 0.6, 5.0, 1.8]),
                      tie_word_embeddings=False),
    # MQA 4:1, head_dim 16: (1 + w) norms, the embedding times sqrt(64), GELU (tanh), tied.
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16, tie_word_embeddings=True),
    # GQA 4:2, head_dim 16: norms on both sides of each block, query_pre_attn_scalar 24, attention
    # and final logits soft-capped low enough to bite, every other layer sliding (window 12), tied.
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=4.0,
                   final_logit_softcapping=6.0, sliding_window=12, tie_word_embeddings=True),
    # GQA 4:2, head_dim 16, 4 layers: q/k norms, sliding layers (window 12) on a RoPE of base 100,
    # the full-attention layers on linear scaling x4 of base 10000, untied.
    "gemma3": dict(model_type="gemma3_text", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, num_hidden_layers=4, query_pre_attn_scalar=20,
                   sliding_window=12,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
                   tie_word_embeddings=False),
    # Mixtures of experts. Mixtral: 4 experts of width 96, 2 per token (renormalized), untied.
    "mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                    tie_word_embeddings=False),
    # Qwen2-MoE: 4 experts of width 32, 2 per token (not renormalized), a shared expert of width 48
    # behind its sigmoid gate, q/k/v biases; layer 1 is a dense MLP of width 96 (mlp_only_layers), tied.
    "qwen2_moe": dict(model_type="qwen2_moe", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, norm_topk_prob=False, mlp_only_layers=[1],
                      tie_word_embeddings=True),
    # Qwen3-MoE: 8 experts of width 32, 3 per token (renormalized), q/k norms, untied.
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=3,
                      moe_intermediate_size=32, norm_topk_prob=True, tie_word_embeddings=False),
    # gpt-oss: 4 experts of width 32 (3D tensors, gate and up interleaved, biases), 2 per token
    # (softmax of the top 2), a clamped SwiGLU whose limit bites (1.5), attention sinks, every
    # other layer sliding (window 12), YaRN x32 of an original 4096 (its default), untied.
    "gpt_oss": dict(model_type="gpt_oss", hidden_size=64, intermediate_size=32, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=12, swiglu_limit=1.5, tie_word_embeddings=False),
}

FAMILY_ARCH = {
    "llama": "LlamaForCausalLM",
    "llama_tied": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "phi3_long": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}

BASE = dict(vocab_size=256, num_hidden_layers=2, max_position_embeddings=512, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


@dataclass
class BuiltModel:
    name: str
    path: str
    model: Any  # transformers model, float32, eval mode
    config: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log_softmax of the logits at every position of ids, [len(ids), vocab] float32."""
        return hf_logprobs(self.model, ids)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()


def _randomize(model, seed: int) -> None:
    """Peaked, deterministic random weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.6 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * (2.5 / math.sqrt(p.shape[1])))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif p.dim() == 3:  # gpt-oss's experts, x @ W: [experts][in][out]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("sinks"):  # gpt-oss's attention sinks: logits as large as the scores'
                p.copy_(1.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build_model(path: Path, model_type: str, seed: int = 0, generation_eos: Optional[list[int]] = None,
                **overrides: Any) -> BuiltModel:
    """Builds a random model of `model_type` with transformers and saves it (safetensors) to path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(BASE)
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomize(model, seed)
    model.eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    if generation_eos is not None:
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
    saved = json.loads((path / "config.json").read_text())
    return BuiltModel(name=model_type, path=str(path), model=model, config=saved)


def _seed_of(name: str) -> int:
    """Each zoo model's weights from its name alone: the same model whichever tests ran first."""
    import zlib

    return zlib.crc32(name.encode()) % 10007 + 1


class ModelZoo:
    """Builds each named model once per session."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._models: dict[str, BuiltModel] = {}

    def get(self, name: str) -> BuiltModel:
        if name not in self._models:
            spec = dict(SPECS[name])
            model_type = spec.pop("model_type")
            built = build_model(self.root / name, model_type, seed=_seed_of(name), **spec)
            built.name = name
            self._models[name] = built
        return self._models[name]

    def custom(self, name: str, model_type: str, **overrides: Any) -> BuiltModel:
        """A one-off model (cached under `name`)."""
        if name not in self._models:
            built = build_model(self.root / name, model_type, seed=_seed_of(name) + 101, **overrides)
            built.name = name
            self._models[name] = built
        return self._models[name]


def hf_logprobs(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits[0].float()
        return torch.log_softmax(logits, dim=-1).numpy()


def random_prompt(rng: np.random.Generator, length: int, vocab: int, low: int = 3) -> list[int]:
    return [int(t) for t in rng.integers(low, vocab, size=length)]


# ---- comparisons ----


def check_prompt_logprobs(out, ref: np.ndarray, tol: float = TOL) -> None:
    """out.prompt_logprobs (prompt_logprobs=k) against ref = transformers logprobs over at least the prompt."""
    ids = out.prompt_token_ids
    assert out.prompt_logprobs is not None, "prompt_logprobs were requested but not returned"
    assert len(out.prompt_logprobs) == len(ids)
    assert out.prompt_logprobs[0] is None
    got = np.array([out.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])
    want = np.array([ref[i - 1, ids[i]] for i in range(1, len(ids))])
    err = np.abs(got - want)
    assert err.max(initial=0.0) <= tol, (
        f"prompt logprob mismatch at position {int(err.argmax()) + 1}: cserve {got[err.argmax()]}, "
        f"transformers {want[err.argmax()]} (max |diff| {err.max()})")
    # With prompt_logprobs=k, the k best tokens too (ranks 1..k; the prompt token may come on top
    # of them with its own rank): each one's logprob, and that it is among transformers' k best
    # (up to a near tie).
    for i in range(1, len(ids)):
        entry = out.prompt_logprobs[i]
        ranks = sorted(lp.rank for lp in entry.values())
        k = next((j for j in range(len(ranks), 0, -1) if ranks[:j] == list(range(1, j + 1))), 0)
        kth = np.sort(ref[i - 1])[-k] if k else None
        for t, lp in entry.items():
            assert abs(lp.logprob - ref[i - 1, t]) <= tol, f"position {i}: logprob of token {t}"
            if lp.rank <= k:
                assert ref[i - 1, t] >= kth - tol, f"position {i}: token {t} (rank {lp.rank}) is not in transformers' top {k}"

def check_greedy(completion, prompt: list[int], ref: np.ndarray, tol: float = TOL, num_tokens: Optional[int] = None):
    """A greedy completion (logprobs=0 or more) against ref = transformers logprobs of prompt + completion.

    Each generated token must be transformers' argmax at that step (up to a near tie of tol) and
    its logprob must match transformers' within tol.
    """
    toks = list(completion.token_ids)
    if num_tokens is not None:
        assert len(toks) == num_tokens
    assert completion.logprobs is not None and len(completion.logprobs) == len(toks)
    P = len(prompt)
    for j, t in enumerate(toks):
        row = ref[P - 1 + j]
        best = int(row.argmax())
        got = completion.logprobs[j][t].logprob
        assert abs(got - row[t]) <= tol, (
            f"step {j}: logprob of token {t}: cserve {got}, transformers {row[t]}")
        assert t == best or row[t] >= row[best] - tol, (
            f"step {j}: cserve chose {t} (transformers logprob {row[t]}), transformers' argmax is {best} "
            f"({row[best]}); tokens so far {toks[:j + 1]}")


def check_request(built: BuiltModel, out, tol: float = TOL, prompt_logprobs: bool = True) -> None:
    """Prompt logprobs (if requested) and every greedy completion of one RequestOutput."""
    prompt = list(out.prompt_token_ids)
    for c in out.outputs:
        ref = built.logprobs(prompt + list(c.token_ids))
        if prompt_logprobs:
            check_prompt_logprobs(out, ref, tol)
        check_greedy(c, prompt, ref, tol)


def assert_same_completions(want, got, tol: float, ranks: bool = False) -> None:
    """Two runs of the same requests (lists of RequestOutput): the same tokens, the same logprob
    ids in the same order, logprobs within tol and, when asked, the same ranks."""
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for lw, lg in zip(w.outputs[0].logprobs, g.outputs[0].logprobs):
            assert list(lg) == list(lw)
            for t in lw:
                assert abs(lg[t].logprob - lw[t].logprob) < tol
                if ranks:
                    assert lg[t].rank == lw[t].rank


def with_config(built: BuiltModel, path: Path, **changes: Any) -> str:
    """A copy of built's directory with config.json fields changed (None deletes a field)."""
    import shutil

    path = Path(path)
    shutil.copytree(built.path, path)
    cfg = copy.deepcopy(built.config)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


# The device make_llm runs on: the CPU, or (CSERVE_TEST_DEVICE=cuda, as benchmarks/gpu_check.sh
# sets it) the same tests again on a GPU.
TEST_DEVICE = os.environ.get("CSERVE_TEST_DEVICE", "cpu")


def make_llm(path: str, **options: Any):
    """LLM over a tiny model with test defaults (float32, 2 threads, short context, TEST_DEVICE)."""
    from cserve import LLM

    kw: dict[str, Any] = dict(dtype="float32", seed=0, max_model_len=256, num_threads=2, device=TEST_DEVICE)
    kw.update(options)
    return LLM(model=path, **kw)


def greedy(max_tokens: int = 12, prompt_logprobs: Optional[int] = 0, **kw: Any):
    from cserve import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=0,
                          prompt_logprobs=prompt_logprobs, **kw)


def seeded_prompt(built: BuiltModel, length: int, seed: int) -> list[int]:
    return random_prompt(np.random.default_rng(seed), length, built.vocab_size)


def max_prompt_logprob_error(built: BuiltModel, path: str, prompt: list[int], **options: Any) -> float:
    """The largest gap between cserve's prompt logprobs on the model at `path` and transformers'
    on `built` (an option or config change that matters makes it large)."""
    ref = built.logprobs(prompt)
    (out,) = make_llm(path, **options).generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))
    got = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    want = np.array([ref[i - 1, prompt[i]] for i in range(1, len(prompt))])
    return float(np.abs(got - want).max())


def check_generate(built: BuiltModel, prompt: list[int], max_tokens: int = 12, **llm_options: Any):
    """cserve's greedy tokens equal transformers' own generate() (incremental, with its KV cache),
    and every step's logprobs match transformers' (check_request). generate() runs max_tokens steps
    only by masking EOS, which cserve (ignoring EOS) may pick: the ids are compared up to the first
    EOS cserve picked, and check_request covers the steps after it."""
    import torch

    with torch.no_grad():
        ids = built.model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                   min_new_tokens=max_tokens, pad_token_id=0)[0, len(prompt):].tolist()
    (out,) = make_llm(built.path, **llm_options).generate({"prompt_token_ids": prompt}, greedy(max_tokens=max_tokens))
    got = list(out.outputs[0].token_ids)
    eos = built.config.get("eos_token_id")
    eos = set(eos if isinstance(eos, list) else [eos])
    cut = next((i for i, t in enumerate(got) if t in eos), len(got))
    assert got[:cut] == ids[:cut]
    check_request(built, out)
    return out
