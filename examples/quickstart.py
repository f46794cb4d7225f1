"""Builds a tiny random Llama with transformers, then generates from it with cserve.

Point LLM(model=...) at any Llama/Mistral/Qwen2/Qwen3 directory with config.json
and safetensors to use real weights.
"""

import tempfile

from cserve import LLM, SamplingParams


def tiny_llama(path: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as model_dir:
        tiny_llama(model_dir)
        llm = LLM(model=model_dir, dtype="bfloat16")
        params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, seed=1, logprobs=2)
        for out in llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}, {"prompt_token_ids": [7, 8, 9]}], params):
            completion = out.outputs[0]
            print(out.prompt_token_ids, "->", completion.token_ids, completion.finish_reason)
