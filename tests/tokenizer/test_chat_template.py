"""Chat templates render as transformers renders them; LLM.chat generates from that prompt."""

from __future__ import annotations

import pytest

from cserve.tokenizer import ChatTemplate, load_chat_template

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
        {"role": "assistant", "content": "Waves fold into foam"},
        {"role": "user", "content": "Another one."},
    ],
]


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_model_dir)


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "multi_turn"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(smollm2_model_dir, hf_tokenizer, conversation, add_generation_prompt):
    template = load_chat_template(str(smollm2_model_dir))
    ours = template.render(conversation, add_generation_prompt=add_generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs


def test_continue_final_message_matches_transformers(smollm2_model_dir, hf_tokenizer):
    conversation = CONVERSATIONS[1]
    ours = load_chat_template(str(smollm2_model_dir)).render(conversation, add_generation_prompt=False,
                                                     continue_final_message=True)
    theirs = hf_tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
    assert ours == theirs


def test_override_template_and_errors(tmp_path):
    inline = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{{ eos_token }}"
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    assert load_chat_template(str(tmp_path)) is None
    assert load_chat_template(str(tmp_path), inline).render([{"role": "user", "content": "hi"}]) == "[user]hi</s>"
    file = tmp_path / "t.jinja"
    file.write_text(inline)
    assert load_chat_template(str(tmp_path), str(file)).render([{"role": "user", "content": "x"}]) == "[user]x</s>"
    failing = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(Exception, match="roles must alternate"):
        failing.render([])
    # The sandbox refuses attribute access that could escape it.
    escaping = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception):
        escaping.render([{"role": "user", "content": "x"}])


def test_llm_chat_equals_generate_on_transformers_ids(smollm2_model_dir, hf_tokenizer):
    from cserve import LLM, SamplingParams

    llm = LLM(str(smollm2_model_dir), dtype="float32", max_model_len=512)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    chat = llm.chat(CONVERSATIONS, params, use_tqdm=False)
    ids = [hf_tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True) for c in CONVERSATIONS]
    ids = [list(i["input_ids"]) if isinstance(i, dict) or hasattr(i, "keys") else list(i) for i in ids]
    direct = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    assert [c.prompt_token_ids for c in chat] == ids
    assert [c.outputs[0].token_ids for c in chat] == [d.outputs[0].token_ids for d in direct]
    assert chat[0].prompt.endswith("<|im_start|>assistant\n")
