// A GGUF file as a Llama-family model: its hyper-parameters as a ModelConfig, and the
// GGUF name of each Hugging Face tensor name.
#pragma once
#include <string>

#include "loader/gguf.h"
#include "loader/model_config.h"

namespace cserve {

// From the "<arch>.*" and "tokenizer.ggml.*" metadata (and, where llama.cpp derives a value
// instead of storing it, as llama.cpp derives it). Throws NotSupported for an architecture or
// option cserve does not run (naming it), InvalidArgument for missing keys.
ModelConfig gguf_model_config(const GgufFile& file);

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; "" when unknown. Gemma 2 / 3
// name their norms after the blocks differently (config.post_norms). An expert's matrix
// ("...experts.5.gate_proj.weight") is a slab of the layer's 3D tensor ("blk.3.ffn_gate_exps.weight"):
// `expert` is then set to 5 (else -1).
std::string gguf_tensor_name(const std::string& hf_name, const ModelConfig& config, int64_t* expert = nullptr);

// llama.cpp's converter permutes the rows of q_proj / k_proj (weights and biases) of llama,
// mistral, granite and smollm3 models (for its interleaved rope); the loader undoes it. Returns
// the number of heads the rows of `hf_name` were permuted over, or 0 when they were not.
int64_t gguf_permuted_heads(const GgufFile& file, const ModelConfig& config, const std::string& hf_name);

// Phi-3, Granite, OLMo 2 and SmolLM3 (gguf_variants.cpp): what each adds to the Llama-shaped
// config gguf_model_config reads, as llama.cpp's converter stores it and llama.cpp runs it.
void read_gguf_variant(const GgufFile& file, const std::string& arch, ModelConfig& config);

}  // namespace cserve
