// A GGUF file as a Llama-family model: its hyper-parameters as a ModelConfig, and the
// GGUF name of each Hugging Face tensor name.
#pragma once
#include <string>

#include "loader/gguf.h"
#include "loader/model_config.h"

namespace cserve {

// From the "<arch>.*" and "tokenizer.ggml.*" metadata. Throws NotSupported for an
// architecture cserve does not run (naming it), InvalidArgument for missing keys.
ModelConfig gguf_model_config(const GgufFile& file);

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; "" when unknown.
std::string gguf_tensor_name(const std::string& hf_name);

// llama.cpp's converter permutes the rows of q_proj / k_proj of "llama" models (for its
// interleaved rope); the loader undoes it. Returns the number of heads the rows of
// `hf_name` were permuted over, or 0 when they were not.
int64_t gguf_permuted_heads(const GgufFile& file, const ModelConfig& config, const std::string& hf_name);

}  // namespace cserve
