"""Speculative decoding with EAGLE heads (vLLM's "eagle" and "eagle3" methods) over a Llama target:
tiny random EAGLE-1 and EAGLE-3 heads written in vLLM's checkpoint format, the drafts cserve
proposes against a torch forward of each head built from transformers' Llama modules (the target's
hidden states from transformers), greedy output identical to no speculation under batching,
chunked prefill, prefix caching and preemption, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cserve import SamplingParams
from cserve.cli.speculative_config import speculative_fields
from tests.helpers.models import make_llm, random_prompt
from tests.helpers.speculation import prompts_with_shared_prefix, run, spec_counts

K = 3
# The target: 7 layers, so that vLLM's default EAGLE-3 layers (2, L // 2, L - 3) are (2, 3, 4).
TARGET = dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=2,
              num_hidden_layers=7, tie_word_embeddings=False)
HEAD = dict(hidden_size=64, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512)
DRAFT_VOCAB = 160  # EAGLE-3's draft vocabulary, mapped to the target's 256 ids by d2t


@pytest.fixture(scope="module")
def target(model_zoo):
    return model_zoo.custom("eagle_target", "llama", **TARGET)


# --- heads in vLLM's checkpoint format -----------------------------------------------------------

def _randn(g, *shape, scale=None):
    import torch

    scale = scale if scale is not None else 1.0 / math.sqrt(shape[-1])
    return torch.randn(*shape, generator=g) * scale


def _layer_tensors(g, prefix: str, attn_in: int, input_norm: bool, hidden_norm: bool, head=HEAD) -> dict:
    import torch

    H, I = head["hidden_size"], head["intermediate_size"]
    NH, NKV = head["num_attention_heads"], head["num_key_value_heads"]
    D = H // NH
    t = {
        f"{prefix}self_attn.q_proj.weight": _randn(g, NH * D, attn_in),
        f"{prefix}self_attn.k_proj.weight": _randn(g, NKV * D, attn_in),
        f"{prefix}self_attn.v_proj.weight": _randn(g, NKV * D, attn_in),
        f"{prefix}self_attn.o_proj.weight": _randn(g, H, NH * D),
        f"{prefix}mlp.gate_proj.weight": _randn(g, I, H),
        f"{prefix}mlp.up_proj.weight": _randn(g, I, H),
        f"{prefix}mlp.down_proj.weight": _randn(g, H, I),
        f"{prefix}post_attention_layernorm.weight": 1.0 + 0.2 * torch.randn(H, generator=g),
    }
    if input_norm:
        t[f"{prefix}input_layernorm.weight"] = 1.0 + 0.2 * torch.randn(H, generator=g)
    if hidden_norm:
        t[f"{prefix}hidden_norm.weight"] = 1.0 + 0.2 * torch.randn(H, generator=g)
    return t


def write_eagle1(path: Path, seed: int, num_layers: int = 1, own_embed=None, config_extra=None,
                 fc_bias: bool = False) -> str:
    """EAGLE-1 as yuhuili/EAGLE-LLaMA3-Instruct-8B: fc over concat(embedding, hidden) (with the
    original EAGLE's bias if asked), layers.N.* with no input_layernorm on the first, the target's
    embedding and LM head unless given."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    H = HEAD["hidden_size"]
    tensors = {"fc.weight": _randn(g, H, 2 * H)}
    if fc_bias:
        tensors["fc.bias"] = 0.3 * torch.randn(H, generator=g)
    for layer in range(num_layers):
        tensors.update(_layer_tensors(g, f"layers.{layer}.", H, input_norm=layer > 0, hidden_norm=False))
    if own_embed is not None:
        tensors["embed_tokens.weight"] = own_embed
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {**dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=256,
                     num_hidden_layers=num_layers, hidden_act="silu", torch_dtype="float32", **HEAD),
              **(config_extra or {})}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def write_eagle3(path: Path, seed: int, config_extra=None, draft_vocab: int = DRAFT_VOCAB, head=HEAD) -> str:
    """EAGLE-3 as yuhuili/EAGLE3-LLaMA3.1-Instruct-8B: fc over three aux hidden states, a midlayer
    whose attention reads 2 x hidden, its own norm and LM head of draft_vocab rows, d2t / t2d. A
    head narrower than the target has its own embed_tokens and target_hidden_size."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    H, V, target_h = head["hidden_size"], 256, TARGET["hidden_size"]
    tensors = {"fc.weight": _randn(g, H, 3 * target_h)}
    tensors.update(_layer_tensors(g, "midlayer.", 2 * H, input_norm=True, hidden_norm=True, head=head))
    if H != target_h:
        tensors["embed_tokens.weight"] = 0.6 * torch.randn(V, H, generator=g)
        config_extra = {"target_hidden_size": target_h, **(config_extra or {})}
    tensors["norm.weight"] = 1.0 + 0.2 * torch.randn(H, generator=g)
    tensors["lm_head.weight"] = _randn(g, draft_vocab, H, scale=2.5 / math.sqrt(H))
    # The draft vocabulary: an increasing choice of target ids (d2t holds id - draft index).
    chosen = np.sort(np.random.default_rng(seed).choice(V, size=draft_vocab, replace=False))
    tensors["d2t"] = torch.tensor(chosen - np.arange(draft_vocab), dtype=torch.int64)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[torch.tensor(chosen)] = True
    tensors["t2d"] = t2d
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {**dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama", vocab_size=V,
                     num_hidden_layers=1, draft_vocab_size=draft_vocab, hidden_act="silu", torch_dtype="float32",
                     **head),
              **(config_extra or {})}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def heads(tmp_path_factory, target):
    import torch

    root = tmp_path_factory.mktemp("heads")
    embed = torch.randn(256, HEAD["hidden_size"], generator=torch.Generator().manual_seed(5)) * 0.6
    return {
        "eagle": write_eagle1(root / "e1", seed=1),
        "eagle_2layers_own_embed": write_eagle1(root / "e1b", seed=2, num_layers=2, own_embed=embed, fc_bias=True),
        "eagle3": write_eagle3(root / "e3", seed=3),
        "eagle3_layer_ids": write_eagle3(root / "e3b", seed=4,
                                         config_extra=dict(eagle_aux_hidden_state_layer_ids=[1, 3, 5])),
        "eagle3_norm_before_residual": write_eagle3(root / "e3c", seed=6, config_extra=dict(norm_before_residual=True)),
        "eagle3_narrow": write_eagle3(root / "e3d", seed=8, head={**HEAD, "hidden_size": 32, "intermediate_size": 48}),
    }


def method_of_head(name: str) -> str:
    return "eagle3" if name.startswith("eagle3") else "eagle"


# --- the reference: the head's forward in torch over transformers' hidden states ----------------

class HeadReference:
    """vLLM's EAGLE-1 / EAGLE-3 forward of a head written by write_eagle*, in float32 torch."""

    def __init__(self, head_dir: str, method: str, target) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import (
            LlamaDecoderLayer,
            LlamaRMSNorm,
            LlamaRotaryEmbedding,
        )

        cfg_json = json.loads((Path(head_dir) / "config.json").read_text())
        sd = load_file(str(Path(head_dir) / "model.safetensors"))
        self.method, self.target = method, target
        hf = target.model
        self.config = LlamaConfig(**{k: v for k, v in cfg_json.items() if k != "architectures"})
        self.config._attn_implementation = "eager"
        H = self.config.hidden_size
        self.embed = sd.get("embed_tokens.weight", hf.model.embed_tokens.weight.detach())
        self.fc = sd["fc.weight"]
        self.fc_bias = sd.get("fc.bias", torch.zeros(self.fc.shape[0]))
        self.rope = LlamaRotaryEmbedding(self.config)
        self.layers = []
        for i in range(self.config.num_hidden_layers):
            prefix = "midlayer." if method == "eagle3" and i == 0 else f"layers.{i}."
            layer = LlamaDecoderLayer(self.config, layer_idx=i)
            if method == "eagle3" and i == 0:  # the attention reads concat(embedding, hidden): 2 x hidden
                attn = layer.self_attn
                for name in ("q_proj", "k_proj", "v_proj"):
                    old = getattr(attn, name)
                    setattr(attn, name, torch.nn.Linear(2 * H, old.out_features, bias=False))
                layer.hidden_norm = LlamaRMSNorm(H, eps=self.config.rms_norm_eps)
            if method == "eagle" and i == 0:
                layer.input_layernorm = torch.nn.Identity()  # EAGLE-1 drops the first input norm
            own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            missing, unexpected = layer.load_state_dict(own, strict=False)
            assert not unexpected and all("input_layernorm" in m for m in missing), (missing, unexpected)
            layer.eval()
            self.layers.append(layer)
        if method == "eagle3":
            self.norm = LlamaRMSNorm(H, eps=self.config.rms_norm_eps)
            self.norm.load_state_dict({"weight": sd["norm.weight"]})
            self.lm_head = sd["lm_head.weight"]
            self.d2t = sd["d2t"]
        else:
            self.lm_head = sd.get("lm_head.weight", hf.lm_head.weight.detach())
        self.norm_before_residual = cfg_json.get("norm_before_residual", False)
        aux = cfg_json.get("eagle_aux_hidden_state_layer_ids")
        L = hf.config.num_hidden_layers
        self.aux_layers = sorted(set(aux if aux else (2, L // 2, L - 3)))

    def target_hidden(self, ids: list[int]):
        """The target's states the head reads, [len(ids)][.]: EAGLE-1 the input of the LM head (after
        the final norm); EAGLE-3 the inputs of the aux layers side by side (residual stream)."""
        import torch

        hf = self.target.model
        seen = {}
        hooks = []
        if self.method == "eagle":
            hooks.append(hf.lm_head.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0])))
        else:
            for i in self.aux_layers:
                hooks.append(hf.model.layers[i].register_forward_pre_hook(
                    lambda m, a, kw, i=i: seen.__setitem__(i, kw.get("hidden_states", a[0] if a else None)),
                    with_kwargs=True))
        try:
            with torch.no_grad():
                hf(torch.tensor([ids]), logits_to_keep=0)
        finally:
            for h in hooks:
                h.remove()
        if self.method == "eagle":
            return seen["final"][0]
        return torch.cat([seen[i][0] for i in self.aux_layers], dim=-1)

    def forward(self, tokens, hidden):
        """Outputs (before the final norm) and logits over the target's vocabulary of the head at
        positions 0..T-1 for its tokens and hidden inputs ([T][hidden], EAGLE-3's already combined)."""
        import torch

        T = len(tokens)
        pos = torch.arange(T)[None]
        e = self.embed[torch.tensor(tokens)]
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        x = torch.cat([e, hidden], -1) @ self.fc.T + self.fc_bias if self.method == "eagle" else hidden
        cos_sin = self.rope(x[None], pos)
        for i, layer in enumerate(self.layers):
            if self.method == "eagle3" and i == 0:
                hn = layer.hidden_norm(x)
                cat = torch.cat([layer.input_layernorm(e), hn], -1)
                attn, _ = layer.self_attn(hidden_states=cat[None], position_embeddings=cos_sin, attention_mask=mask)
                h = (hn if self.norm_before_residual else x)[None] + attn
                x = (h + layer.mlp(layer.post_attention_layernorm(h)))[0]
            else:
                out = layer(x[None], attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
                x = (out[0] if isinstance(out, tuple) else out)[0]
        if self.method == "eagle":
            return x, x @ self.lm_head.T
        draft_logits = self.norm(x) @ self.lm_head.T
        logits = torch.full((T, 256), float("-inf"))
        logits[:, torch.arange(len(self.d2t)) + self.d2t] = draft_logits
        return x, logits

    def drafts(self, tokens: list[int], k: int):
        """k greedy drafts after `tokens`, as vLLM: the head over positions 0..L-2 (token t + 1 with
        the target's state of t), then each draft with the head's own last output. Returns the drafts
        and per draft the gap between its logit and the runner-up's."""
        import torch

        with torch.no_grad():
            h = self.target_hidden(tokens[:-1])
            if self.method == "eagle3":
                h = h @ self.fc.T
            toks, hidden = list(tokens[1:]), h
            drafts, gaps = [], []
            for _ in range(k):
                out, logits = self.forward(toks, hidden)
                top2 = torch.topk(logits[-1], 2)
                drafts.append(int(top2.indices[0]))
                gaps.append(float(top2.values[0] - top2.values[1]))
                toks.append(drafts[-1])
                hidden = torch.cat([hidden, out[-1:]], 0)
        return drafts, gaps


def check_drafts(reference: HeadReference, tokens: list[int], got: list[int]) -> int:
    """cserve's drafts against the reference's, up to a near tie (then later drafts may part).
    Returns how many were compared."""
    want, gaps = reference.drafts(tokens, len(got))
    for j, (w, g) in enumerate(zip(want, got)):
        if w != g:
            assert gaps[j] < 1e-3, f"draft {j} after {len(tokens)} tokens: {g}, the reference {w} (gap {gaps[j]})"
            return j
    return len(got)


# --- (a) the drafts against the reference --------------------------------------------------------

@pytest.mark.parametrize("head_name", ["eagle", "eagle_2layers_own_embed", "eagle3", "eagle3_layer_ids",
                                       "eagle3_norm_before_residual", "eagle3_narrow"])
def test_drafts_match_the_reference_forward(target, heads, head_name):
    from cserve._core import testing

    method = method_of_head(head_name)
    reference = HeadReference(heads[head_name], method, target)
    # Chunked prefill (24 tokens a step) and two requests sharing two full blocks plus the token
    # after them (what the head's cache holds at a block's last position depends on that token).
    harness = testing.EagleHarness(target.path, heads[head_name], method, K, num_blocks=64, block_size=16,
                                   max_num_batched_tokens=24)
    rng = np.random.default_rng(7)
    shared = random_prompt(rng, 33, target.vocab_size)
    harness.add_request("a", shared + random_prompt(rng, 6, target.vocab_size), 14)
    harness.add_request("b", random_prompt(rng, 20, target.vocab_size), 14)
    steps, compared = 0, 0
    while harness.has_unfinished():
        for _, tokens, drafts in harness.step():
            assert len(drafts) == K
            compared += check_drafts(reference, list(tokens), list(drafts))
        steps += 1
        if steps == 3:  # "c" joins later and hits the blocks "a" cached
            harness.add_request("c", shared + random_prompt(rng, 4, target.vocab_size), 10)
    assert harness.prefix_cache_hits > 0
    assert compared > 20


def test_drafts_match_the_reference_on_a_qwen3_target(model_zoo, tmp_path):
    from cserve._core import testing

    from tests.helpers.models import SPECS

    # Another family of the Llama residual stream (q/k norms, a wider head_dim), 4 layers: the
    # head's config names the aux layers (vLLM's default (2, 2, 1) would not be three).
    spec = {k: v for k, v in SPECS["qwen3"].items() if k != "model_type"}
    target = model_zoo.custom("eagle_qwen3_target", "qwen3", **{**spec, "num_hidden_layers": 4})
    head = write_eagle3(tmp_path / "head", seed=12, config_extra={"eagle_aux_hidden_state_layer_ids": [1, 2, 3]})
    reference = HeadReference(head, "eagle3", target)
    harness = testing.EagleHarness(target.path, head, "eagle3", K, max_num_batched_tokens=24)
    rng = np.random.default_rng(2)
    for i, n in enumerate((30, 12)):
        harness.add_request(f"r{i}", random_prompt(rng, n, target.vocab_size), 12)
    compared = 0
    while harness.has_unfinished():
        for _, tokens, drafts in harness.step():
            compared += check_drafts(reference, list(tokens), list(drafts))
    assert compared > 20


def test_drafts_match_the_reference_through_preemption(target, heads):
    from cserve._core import testing

    reference = HeadReference(heads["eagle3"], "eagle3", target)
    # Blocks of 8 tokens (a proposal crosses block ends) and few of them: requests are preempted and
    # recomputed, the head's cache with them.
    harness = testing.EagleHarness(target.path, heads["eagle3"], "eagle3", K, num_blocks=12, block_size=8,
                                   max_num_batched_tokens=32, enable_prefix_caching=False)
    rng = np.random.default_rng(3)
    for i, n in enumerate((20, 25, 14)):
        harness.add_request(f"r{i}", random_prompt(rng, n, target.vocab_size), 20)
    compared = 0
    while harness.has_unfinished():
        for _, tokens, drafts in harness.step():
            compared += check_drafts(reference, list(tokens), list(drafts))
    assert harness.num_preemptions > 0 and compared > 20


@pytest.mark.parametrize("head_name", ["eagle", "eagle3"])
def test_drafts_match_the_reference_with_graph_padding(target, heads, head_name, monkeypatch):
    from cserve._core import testing

    # Graphs (the CPU's emulation) run the decode-only steps: here the second step of every request
    # (two tokens each, so the drafts of the first are cut to none), three requests padded to four.
    # The hidden states the head reads then come from the padded batch's buffers.
    monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")
    method = method_of_head(head_name)
    reference = HeadReference(heads[head_name], method, target)
    harness = testing.EagleHarness(target.path, heads[head_name], method, K, num_blocks=64, block_size=16,
                                   graph_sizes=[1, 2, 4, 8])
    rng = np.random.default_rng(5)
    for i, n in enumerate((9, 14, 11)):
        harness.add_request(f"r{i}", random_prompt(rng, n, target.vocab_size), 2)
    compared = []
    while harness.has_unfinished():
        step = harness.step()
        compared.append(sum(check_drafts(reference, list(tokens), list(drafts)) for _, tokens, drafts in step))
    assert len(compared) == 2 and compared[1] >= 6


# --- (b), (c) greedy output unchanged -------------------------------------------------------------

def eagle_config(method: str, path: str, **extra) -> dict:
    # auto_disable off: every draft is verified, so each step exercises the head's cache.
    return {"method": method, "model": path, "num_speculative_tokens": K, "auto_disable": False, **extra}


@pytest.fixture(scope="module")
def prompts(target):
    return prompts_with_shared_prefix(target.vocab_size)


@pytest.mark.parametrize("head_name", ["eagle", "eagle3"])
def test_greedy_output_is_unchanged(target, heads, prompts, head_name):
    want = run(make_llm(target.path), prompts)
    spec = make_llm(target.path, speculative_config=eagle_config(method_of_head(head_name), heads[head_name]))
    info = spec.engine.model_info()
    assert info.speculative_method == method_of_head(head_name) and info.num_speculative_tokens == K
    assert run(spec, prompts) == want
    drafted, _ = spec_counts(spec)
    assert drafted > 0


@pytest.mark.parametrize("head_name", ["eagle", "eagle3"])
def test_chunked_prefill_prefix_caching_and_preemption(target, heads, prompts, head_name):
    config = eagle_config(method_of_head(head_name), heads[head_name])
    options = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=16, block_size=16)
    want = run(make_llm(target.path, **options), prompts)
    spec = make_llm(target.path, speculative_config=config, **options)
    # Twice: the second round's prompts hit the cache the first one filled (the head's cache too).
    assert run(spec, prompts) == want
    assert run(spec, prompts) == want
    assert spec_counts(spec)[0] > 0 and spec.engine.stats().prefix_cache_hits > 0

    options = dict(max_num_batched_tokens=32, block_size=8, num_gpu_blocks_override=18, enable_prefix_caching=True)
    want = run(make_llm(target.path, **options), prompts, max_tokens=40)
    spec = make_llm(target.path, speculative_config=config, **options)
    assert run(spec, prompts, max_tokens=40) == want
    stats = spec.engine.stats()
    assert stats.num_preemptions > 0 and stats.num_free_blocks == 18 and spec_counts(spec)[0] > 0


def test_a_head_that_reproduces_its_target_has_every_draft_accepted(model_zoo, tmp_path):
    """A one-layer target whose attention adds nothing (v_proj zero: each position's logits depend
    on its own token) with a final norm of ones, and an EAGLE-1 head made of its layer (fc passes
    the embedding through): the head's draft for position t + 1 is the target's greedy token there,
    its output before any norm the target's residual stream, so every draft is accepted."""
    import torch
    from safetensors.torch import save_file

    built = model_zoo.custom("eagle_bigram_target", "llama", **{**TARGET, "num_hidden_layers": 1})
    hf = built.model
    with torch.no_grad():
        hf.model.layers[0].self_attn.v_proj.weight.zero_()
        hf.model.norm.weight.fill_(1.0)
    target_dir = tmp_path / "target"
    hf.save_pretrained(str(target_dir), safe_serialization=True)
    H = TARGET["hidden_size"]
    layer = {f"layers.0.{k}": v.detach().clone() for k, v in hf.model.layers[0].state_dict().items()
             if not k.startswith("input_layernorm")}
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    save_file({"fc.weight": torch.cat([torch.eye(H), torch.zeros(H, H)], 1), **layer},
              str(head_dir / "model.safetensors"))
    config = {k: v for k, v in built.config.items() if k not in ("architectures", "num_hidden_layers")}
    (head_dir / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"],
                                                      "num_hidden_layers": 1}))
    prompts = [random_prompt(np.random.default_rng(i), 12 + 7 * i, 256) for i in range(3)]
    want = run(make_llm(str(target_dir)), prompts)
    spec = make_llm(str(target_dir), speculative_config=eagle_config("eagle", str(head_dir)))
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted

    # No proposals while more than two requests run (disable_by_batch_size), but the head still
    # runs over every position: once the longest request runs alone, its drafts (read from the
    # head's cache of the steps without proposals) are all accepted again.
    long = run(make_llm(str(target_dir)), prompts, max_tokens=30)
    spec = make_llm(str(target_dir), speculative_config=eagle_config("eagle", str(head_dir), disable_by_batch_size=2))
    lengths = (6, 6, 30)
    outs = spec.generate([{"prompt_token_ids": p} for p in prompts],
                         [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths],
                         use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == [w[:n] for w, n in zip(long, lengths)]
    drafted, accepted = spec_counts(spec)
    assert 0 < drafted <= 30 - 6 and accepted == drafted


def test_seeded_sampling_is_unchanged(target, heads, prompts):
    # Greedy drafts are certain: verification is exact rejection sampling, and on the CPU the
    # request's generator draws once per output token, so seeded output is the same token for token.
    sp = SamplingParams(temperature=0.8, top_p=0.95, seed=5, n=2, max_tokens=24, ignore_eos=True)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    want = [[list(c.token_ids) for c in o.outputs] for o in make_llm(target.path).generate(inputs, sp, use_tqdm=False)]
    spec = make_llm(target.path, speculative_config=eagle_config("eagle3", heads["eagle3"]))
    got = [[list(c.token_ids) for c in o.outputs] for o in spec.generate(inputs, sp, use_tqdm=False)]
    assert got == want


def test_with_graph_padding(target, heads, prompts, monkeypatch):
    # Graphs (the CPU's emulation): the target's hidden states come from the padded batch's buffers.
    monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")
    want = run(make_llm(target.path, device="cpu"), prompts)
    spec = make_llm(target.path, device="cpu", speculative_config=eagle_config("eagle", heads["eagle"]))
    assert run(spec, prompts) == want
    assert spec_counts(spec)[0] > 0


# --- (d) config and refusals ----------------------------------------------------------------------

def test_config_keys():
    fields = speculative_fields({"method": "eagle3", "model": "/h", "num_speculative_tokens": 2})
    assert fields["speculative_method"] == "eagle3" and fields["speculative_model"] == "/h"
    assert fields["num_speculative_tokens"] == 2
    # vLLM's detection by the head's name when no method is given.
    assert speculative_fields({"model": "/m/EAGLE-LLaMA3-Instruct-8B", "num_speculative_tokens": 2})[
        "speculative_method"] == "eagle"
    assert speculative_fields({"model": "/m/EAGLE3-LLaMA3.1-Instruct-8B", "num_speculative_tokens": 2})[
        "speculative_method"] == "eagle3"
    with pytest.raises(ValueError, match="needs the EAGLE head's directory"):
        speculative_fields({"method": "eagle", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="num_speculative_tokens must be provided with the eagle3 method"):
        speculative_fields({"method": "eagle3", "model": "/h"})
    with pytest.raises(NotImplementedError, match="speculative_token_tree"):
        speculative_fields({"method": "eagle", "model": "/h", "num_speculative_tokens": 2,
                            "speculative_token_tree": "[(0,), (1,)]"})
    with pytest.raises(NotImplementedError, match="quantization of an eagle3 head"):
        speculative_fields({"method": "eagle3", "model": "/h", "num_speculative_tokens": 2, "quantization": "fp8"})
    with pytest.raises(NotImplementedError, match="draft_tensor_parallel_size=2"):
        speculative_fields({"method": "eagle", "model": "/h", "num_speculative_tokens": 2,
                            "draft_tensor_parallel_size": 2})


def test_serve_flags():
    from cserve.cli.args import engine_options, parse_serve_args

    args = parse_serve_args(["m", "--speculative-config",
                             '{"method": "eagle3", "model": "/h", "num_speculative_tokens": 4}'])
    options = engine_options(args)
    assert options["speculative_method"] == "eagle3" and options["speculative_model"] == "/h"
    assert options["num_speculative_tokens"] == 4


def test_refusals(target, heads, model_zoo, tmp_path):
    # Not three distinct aux layers (vLLM's model would hand fc fewer states than it reads).
    dup = write_eagle3(tmp_path / "dup", seed=9, config_extra=dict(eagle_aux_hidden_state_layer_ids=[1, 1, 2]))
    with pytest.raises(ValueError, match=r"aux hidden states of target layers \(1, 1, 2\) are not three distinct"):
        make_llm(target.path, speculative_config=eagle_config("eagle3", dup))
    # Another vocabulary.
    other = write_eagle1(tmp_path / "vocab", seed=9, config_extra=dict(vocab_size=300))
    with pytest.raises(ValueError, match="vocabulary of 300 tokens, the target model 256"):
        make_llm(target.path, speculative_config=eagle_config("eagle", other))
    # A head with no d2t whose draft vocabulary is not the target's.
    no_d2t = write_eagle3(tmp_path / "nod2t", seed=9)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(Path(no_d2t) / "model.safetensors"))
    del sd["d2t"]
    save_file(sd, str(Path(no_d2t) / "model.safetensors"))
    with pytest.raises(ValueError, match="without a d2t table"):
        make_llm(target.path, speculative_config=eagle_config("eagle3", no_d2t))
    # Widths: an EAGLE-1 head reads the target's states at its own width; a narrower EAGLE-3 head
    # needs an embedding of its own.
    wide = write_eagle1(tmp_path / "wide", seed=9, config_extra=dict(hidden_size=32))
    with pytest.raises(ValueError, match="hidden_size 32, the target 64: an EAGLE-1 head's must be the target's"):
        make_llm(target.path, speculative_config=eagle_config("eagle", wide))
    narrow = write_eagle3(tmp_path / "narrow", seed=9, head={**HEAD, "hidden_size": 32, "intermediate_size": 48})
    sd = load_file(str(Path(narrow) / "model.safetensors"))
    del sd["embed_tokens.weight"]
    save_file(sd, str(Path(narrow) / "model.safetensors"))
    with pytest.raises(ValueError, match="no embed_tokens of its own"):
        make_llm(target.path, speculative_config=eagle_config("eagle3", narrow))
    # A target outside the Llama family.
    olmo = model_zoo.get("olmo2")
    with pytest.raises(NotImplementedError, match="Llama-family targets .* not Olmo2ForCausalLM"):
        make_llm(olmo.path, speculative_config=eagle_config("eagle", heads["eagle"]))
    with pytest.raises(NotImplementedError, match="a GGUF eagle head"):
        make_llm(target.path, speculative_config=eagle_config("eagle", str(tmp_path / "head.gguf")))
    # Tensor parallelism.
    with pytest.raises(NotImplementedError, match="eagle3 is not supported yet with tensor or pipeline parallelism"):
        make_llm(target.path, tensor_parallel_size=2, speculative_config=eagle_config("eagle3", heads["eagle3"]))
