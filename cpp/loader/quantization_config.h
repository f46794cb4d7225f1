// config.json's quantization_config, read as vLLM reads it, and the --quantization flag checked
// against it. The formats cserve serves: AWQ and GPTQ int4 (and GPTQ int8), compressed-tensors
// pack-quantized int4 (w4a16) and fp8 ("fp8" checkpoints with block-wise or per-tensor scales,
// compressed-tensors float-quantized), gpt-oss's MXFP4 experts, and vLLM's online fp8 of an
// unquantized checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cserve {

class Json;

struct QuantizationConfig {
  // "" (none), "awq", "gptq", "compressed-tensors", "fp8" or "mxfp4" (gpt-oss's experts only).
  std::string method;
  int bits = 0;                // 4 or 8 (AWQ, GPTQ, compressed-tensors int); 8 for fp8
  int64_t group_size = 0;      // values per scale along k; 0: one group per row (channel-wise)
  bool zero_point = false;     // asymmetric: AWQ zero_point, GPTQ !sym, compressed-tensors !symmetric
  bool desc_act = false;       // GPTQ act-order (g_idx permutes the groups)
  bool gptq_v2_zeros = false;  // GPTQ checkpoint_format gptq_v2: zeros stored without v1's -1
  // compressed-tensors: "pack-quantized" (int) or "float-quantized" / "naive-quantized" (fp8).
  std::string format;
  bool fp8 = false;                         // weights in float8_e4m3fn
  std::vector<int64_t> weight_block_size;   // fp8: [128, 128] block-wise scales; empty: per tensor / channel
  bool online = false;                      // fp8 computed at load from an unquantized checkpoint
  // Modules left unquantized (modules_to_not_convert / ignore; "re:" patterns as regexes).
  std::vector<std::string> ignored;

  bool enabled() const { return !method.empty(); }
  // Whether the linear module (e.g. "model.layers.0.self_attn.q_proj") stays unquantized.
  bool ignores(const std::string& module) const;
};

// Reads the quantization_config object (null: none). Throws NotSupported naming the method or
// setting cserve does not serve (with vLLM's wording for unknown methods), InvalidArgument for
// malformed fields; `source` names the file.
QuantizationConfig parse_quantization_config(const Json* config, const std::string& source);

// Applies --quantization (vLLM's names; "" when unset) to the checkpoint's config: checks that
// they agree as vLLM does (awq_marlin / gptq_marlin name the awq / gptq checkpoints), turns on
// online fp8 for an unquantized checkpoint. Throws NotSupported / InvalidArgument.
void apply_quantization_flag(QuantizationConfig& config, const std::string& flag, bool gguf_file);

}  // namespace cserve
