"""Gemma 3 270M's Q4_K_M GGUF answers text prompts: through LLM, and a chat request through the
OpenAI server, with the tokenizer built from the file (tests/helpers/gemma3_270m.py)."""

from __future__ import annotations

import pytest

from tests.helpers.gemma3_270m import CHAT_TEMPLATE

# What transformers' GemmaTokenizer gives (tests/tokenizer/test_gguf_gemma_tokenizer.py checks the
# whole vocabulary): <bos>, then "The" "▁capital" "▁of" "▁France" "▁is", no dummy prefix.
CAPITAL_PROMPT = "The capital of France is"
CAPITAL_IDS = [2, 818, 5279, 529, 7001, 563]


def test_llm_answers_text_prompts(gemma3_270m_gguf):
    from cserve import LLM, SamplingParams

    llm = LLM(str(gemma3_270m_gguf), max_model_len=512, num_threads=2, kv_cache_memory_bytes=1 << 26)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    capital, story = llm.generate([CAPITAL_PROMPT, "Once upon a time"], params, use_tqdm=False)
    assert capital.prompt_token_ids == CAPITAL_IDS
    for out in (capital, story):
        completion = out.outputs[0]
        assert len(completion.token_ids) == 12 and completion.finish_reason == "length"
        assert completion.text.strip() and "<0x" not in completion.text
        assert completion.text == llm.get_tokenizer().decode(completion.token_ids)
    assert "france" in capital.outputs[0].text.lower() or "paris" in capital.outputs[0].text.lower()
    # Every Gemma turn ends with <end_of_turn> (106): it stops generation beside <eos> (1), as in
    # llama.cpp, although the file names only <eos>.
    assert set(llm.model_info.eos_token_ids) == {1, 106}


@pytest.fixture(scope="module")
def gemma3_server(gemma3_270m_gguf, tmp_path_factory):
    from tests.helpers.server import running_server

    template = tmp_path_factory.mktemp("gemma3") / "chat_template.jinja"
    template.write_text(CHAT_TEMPLATE)  # a base model: the file has none
    with running_server(str(gemma3_270m_gguf), "--served-model-name", "gemma3", "--max-model-len", "512",
                        "--chat-template", str(template), env={"CSERVE_NUM_THREADS": "2"}) as server:
        yield server


def test_server_chat_reply(gemma3_server):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with gemma3_server.client(timeout=120) as http:
        reply = http.post("/v1/chat/completions", json={
            "model": "gemma3", "messages": messages, "max_tokens": 16, "temperature": 0}).json()
        tokens = http.post("/tokenize", json={"model": "gemma3", "messages": messages}).json()
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    # <bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n: one <bos>, from the template
    assert tokens["tokens"][:2] == [2, 105] and tokens["tokens"].count(2) == 1
    assert tokens["tokens"][-3:] == [105, 4368, 107]
    assert usage["prompt_tokens"] == tokens["count"] == 16
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
