"""`cserve serve` on the real SmolLM2-135M-Instruct: its chat template renders as transformers
renders it, and greedy chat tokens equal transformers' (float32, the oracle)."""

from __future__ import annotations

import pytest

from tests.helpers.server import ServerProcess

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_server(smollm2_model_dir, tmp_path_factory):
    proc = ServerProcess(str(smollm2_model_dir), "--served-model-name", "smol", "--dtype", "float32",
                         "--max-model-len", "2048", log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready(timeout=120)
    yield proc
    proc.stop()


def test_chat_greedy_matches_transformers(smol_server, smollm2_model_dir):
    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client = openai.OpenAI(base_url=smol_server.base_url + "/v1", api_key="x", max_retries=0)
    out = client.chat.completions.create(model="smol", messages=MESSAGES, temperature=0, max_tokens=12,
                                         extra_body={"ignore_eos": True, "return_token_ids": True})
    prompt_ids = out.model_extra["prompt_token_ids"]
    tok = AutoTokenizer.from_pretrained(smollm2_model_dir)
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    want_prompt = tok(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids == want_prompt
    model = AutoModelForCausalLM.from_pretrained(smollm2_model_dir, torch_dtype=torch.float32)
    ids = list(prompt_ids)
    with torch.no_grad():  # plain argmax: ignore_eos lets EOS be generated, it just does not stop
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    ref = ids[len(prompt_ids):]
    assert out.choices[0].model_extra["token_ids"] == ref
    assert out.choices[0].message.content == tok.decode(ref, skip_special_tokens=True)
    assert "Paris" in out.choices[0].message.content


def test_sampled_stream_equals_full_and_stops_on_text(smol_server):
    """A real tokenizer (byte-level BPE with multi-byte characters): sampled text streamed in
    deltas adds up to the non-streamed text, and a stop string taken from the middle of that text
    ends both at the same place."""
    import openai

    client = openai.OpenAI(base_url=smol_server.base_url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Write two sentences about café culture in Paris, with an emoji."}]
    kw = dict(model="smol", messages=messages, temperature=0.9, seed=1234, max_tokens=48)
    full = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                       if c.choices)
    assert streamed == full and len(full) > 20
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full.find(stop)
    stopped = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert stopped.message.content == full[:cut] and stopped.finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stop=[stop], stream=True, **kw) if c.choices)
    assert streamed == full[:cut]
