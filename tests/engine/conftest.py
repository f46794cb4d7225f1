import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama saved by transformers (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("engine_tiny_llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)
    return str(path)
