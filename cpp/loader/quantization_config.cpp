#include "loader/quantization_config.h"

#include <regex>

#include "cserve/error.h"
#include "util/json.h"

namespace cserve {

namespace {

// vLLM's quantization method names (QuantizationMethods); the ones cserve serves are below.
constexpr const char* kVllmMethods[] = {
    "awq", "deepspeedfp", "tpu_int8", "fp8", "ptpc_fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
    "bitblas", "gguf", "gptq_marlin_24", "gptq_marlin", "gptq_bitblas", "awq_marlin", "gptq", "compressed-tensors",
    "bitsandbytes", "hqq", "experts_int8", "ipex", "quark", "moe_wna16", "torchao", "auto-round", "rtn", "inc",
    "mxfp4", "petit_nvfp4", "marlin", "qqq", "aqlm"};
constexpr const char* kServed = "awq, awq_marlin, gptq, gptq_marlin, compressed-tensors, fp8, mxfp4, gguf";

bool known_to_vllm(const std::string& m) {
  for (const char* k : kVllmMethods)
    if (m == k) return true;
  return false;
}

// Field readers naming the file and the field.
struct Reader {
  const Json& obj;
  std::string where;  // "config.json: quantization_config"

  [[noreturn]] void invalid(const std::string& field, const std::string& why) const {
    throw InvalidArgument(where + "." + field + " " + why);
  }
  const Json* get(const std::string& key) const {
    const Json* v = obj.find(key);
    return v == nullptr || v->is_null() ? nullptr : v;
  }
  // The first of `keys` present (AWQ writes w_bit / q_group_size as well as bits / group_size).
  const Json* first(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (const Json* v = get(k)) return v;
    return nullptr;
  }
  int64_t integer(std::initializer_list<const char*> keys, int64_t fallback) const {
    const Json* v = first(keys);
    if (v == nullptr) return fallback;
    if (!v->is_number() || v->as_number() != static_cast<double>(static_cast<int64_t>(v->as_number())))
      invalid(*keys.begin(), "must be an integer");
    return v->as_int();
  }
  bool boolean(const std::string& key, bool fallback) const {
    const Json* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) invalid(key, "must be true or false");
    return v->as_bool();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    const Json* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) invalid(key, "must be a string");
    return v->as_string();
  }
  void strings(const std::string& key, std::vector<std::string>& out) const {
    const Json* v = get(key);
    if (v == nullptr) return;
    if (!v->is_array()) invalid(key, "must be a list of module names");
    for (const Json& s : v->as_array()) {
      if (!s.is_string()) invalid(key, "must be a list of module names");
      out.push_back(s.as_string());
    }
  }
};

void check_group_size(const Reader& r, const QuantizationConfig& q) {
  if (q.group_size != 0 && (q.group_size < 32 || q.group_size % 32 != 0))
    throw NotSupported(r.where + ": group_size " + std::to_string(q.group_size) +
                       " is not supported (cserve's int4 blocks need a multiple of 32: 32, 64, 128, ...; or -1)");
}

void read_awq(const Reader& r, QuantizationConfig& q) {
  q.bits = static_cast<int>(r.integer({"bits", "w_bit"}, 4));
  q.group_size = r.integer({"group_size", "q_group_size"}, 128);
  q.zero_point = r.boolean("zero_point", true);
  const std::string version = r.string("version", "gemm");
  if (q.bits != 4) throw NotSupported(r.where + ": AWQ with " + std::to_string(q.bits) + " bits is not supported (4 only)");
  if (version != "gemm" && version != "GEMM")
    throw NotSupported(r.where + ": AWQ version '" + version + "' is not supported (gemm only)");
  if (!q.zero_point) throw NotSupported(r.where + ": AWQ without zero points is not supported");
  if (q.group_size == -1) q.group_size = 0;
  check_group_size(r, q);
  r.strings("modules_to_not_convert", q.ignored);
}

void read_gptq(const Reader& r, QuantizationConfig& q) {
  q.bits = static_cast<int>(r.integer({"bits"}, 4));
  q.group_size = r.integer({"group_size"}, 128);
  q.zero_point = !r.boolean("sym", true);
  q.desc_act = r.boolean("desc_act", false);
  const std::string format = r.string("checkpoint_format", "gptq");
  if (q.bits != 4 && q.bits != 8)
    throw NotSupported(r.where + ": GPTQ with " + std::to_string(q.bits) + " bits is not supported (4 or 8)");
  if (format != "gptq" && format != "gptq_v2")
    throw NotSupported(r.where + ": GPTQ checkpoint_format '" + format + "' is not supported (gptq, gptq_v2)");
  q.gptq_v2_zeros = format == "gptq_v2";
  if (const Json* dynamic = r.get("dynamic"); dynamic && dynamic->is_object() && !dynamic->as_object().empty())
    throw NotSupported(r.where + ": GPTQ per-module 'dynamic' overrides are not supported");
  if (q.group_size == -1) q.group_size = 0;
  check_group_size(r, q);
  r.strings("modules_to_not_convert", q.ignored);
}

void read_fp8(const Reader& r, QuantizationConfig& q) {
  q.bits = 8;
  q.fp8 = true;
  const std::string fmt = r.string("fmt", "e4m3");
  if (fmt != "e4m3") throw NotSupported(r.where + ": fp8 format '" + fmt + "' is not supported (e4m3 only)");
  if (const Json* b = r.get("weight_block_size")) {
    if (!b->is_array() || b->as_array().size() != 2) r.invalid("weight_block_size", "must be [rows, cols]");
    for (const Json& v : b->as_array()) {
      if (!v.is_number() || v.as_number() < 1) r.invalid("weight_block_size", "must hold positive integers");
      q.weight_block_size.push_back(v.as_int());
    }
  }
  r.strings("ignored_layers", q.ignored);
  r.strings("modules_to_not_convert", q.ignored);
}

// gpt-oss's MXFP4 experts (loader/mxfp4_experts.h); every other module stays float.
void read_mxfp4(const Reader& r, QuantizationConfig& q) {
  q.bits = 4;
  r.strings("modules_to_not_convert", q.ignored);
}

// compressed-tensors: one config group targeting Linear, weight-only int (pack-quantized) or fp8.
void read_compressed_tensors(const Reader& r, QuantizationConfig& q) {
  q.format = r.string("format", "");
  r.strings("ignore", q.ignored);
  const Json* groups = r.get("config_groups");
  if (!groups || !groups->is_object() || groups->as_object().size() != 1)
    throw NotSupported(r.where + ": compressed-tensors checkpoints with " +
                       std::to_string(groups && groups->is_object() ? groups->as_object().size() : 0) +
                       " config groups are not supported (one group over Linear layers)");
  const Json& group = groups->as_object().begin()->second;
  const Reader g{group, r.where + ".config_groups." + groups->as_object().begin()->first};
  const Json* weights = g.get("weights");
  if (!weights || !weights->is_object()) g.invalid("weights", "is missing");
  const Reader w{*weights, g.where + ".weights"};
  const std::string type = w.string("type", "int");
  const std::string strategy = w.string("strategy", "group");
  q.bits = static_cast<int>(w.integer({"num_bits"}, 4));
  q.zero_point = !w.boolean("symmetric", true);
  if (type == "float") {
    if (q.bits != 8) throw NotSupported(w.where + ": float weights of " + std::to_string(q.bits) + " bits are not supported (fp8)");
    q.fp8 = true;
    if (strategy == "block") {
      const Json* bs = w.get("block_structure");
      if (!bs || !bs->is_array() || bs->as_array().size() != 2) w.invalid("block_structure", "must be [rows, cols]");
      for (const Json& v : bs->as_array()) q.weight_block_size.push_back(v.as_int());
    } else if (strategy != "tensor" && strategy != "channel") {
      throw NotSupported(w.where + ": fp8 strategy '" + strategy + "' is not supported (tensor, channel, block)");
    }
    if (q.format != "float-quantized" && q.format != "naive-quantized")
      throw NotSupported(r.where + ": compressed-tensors format '" + q.format + "' for fp8 is not supported");
    return;
  }
  if (type != "int") throw NotSupported(w.where + ": weight type '" + type + "' is not supported");
  if (q.format != "pack-quantized")
    throw NotSupported(r.where + ": compressed-tensors format '" + q.format +
                       "' is not supported for int weights (pack-quantized only)");
  if (q.bits != 4 && q.bits != 8)
    throw NotSupported(w.where + ": " + std::to_string(q.bits) + "-bit weights are not supported (4 or 8)");
  if (g.get("input_activations"))
    throw NotSupported(g.where + ": quantized input activations (w" + std::to_string(q.bits) +
                       "a8) are not supported; cserve serves weight-only int (w4a16, w8a16)");
  if (strategy == "group") {
    q.group_size = w.integer({"group_size"}, 0);
    if (q.group_size <= 0) w.invalid("group_size", "must be positive for the group strategy");
  } else if (strategy == "channel") {
    q.group_size = 0;
  } else {
    throw NotSupported(w.where + ": int strategy '" + strategy + "' is not supported (group, channel)");
  }
  const Json* actorder = w.get("actorder");
  q.desc_act = actorder && ((actorder->is_string() && actorder->as_string() == "group") ||
                            (actorder->is_bool() && actorder->as_bool()));
  if (actorder && actorder->is_string() && actorder->as_string() != "group" && actorder->as_string() != "weight")
    throw NotSupported(w.where + ": actorder '" + actorder->as_string() + "' is not supported");
  check_group_size(w, q);
}

}  // namespace

bool QuantizationConfig::ignores(const std::string& module) const {
  for (const std::string& entry : ignored) {
    if (entry.rfind("re:", 0) == 0) {
      if (std::regex_match(module, std::regex(entry.substr(3)))) return true;
    } else if (!entry.empty() && module.find(entry) != std::string::npos) {
      return true;  // vLLM's substring match (modules_to_not_convert)
    }
  }
  return false;
}

QuantizationConfig parse_quantization_config(const Json* config, const std::string& source) {
  QuantizationConfig q;
  if (config == nullptr || config->is_null()) return q;
  const Reader r{*config, source + ": quantization_config"};
  if (!config->is_object()) throw InvalidArgument(r.where + " must be an object");
  const std::string method = r.string("quant_method", "");
  if (method.empty()) r.invalid("quant_method", "is missing");
  q.method = method;
  if (method == "awq") read_awq(r, q);
  else if (method == "gptq") read_gptq(r, q);
  else if (method == "fp8") read_fp8(r, q);
  else if (method == "compressed-tensors") read_compressed_tensors(r, q);
  else if (method == "mxfp4") read_mxfp4(r, q);
  else if (known_to_vllm(method))
    throw NotSupported(source + ": quantization method '" + method + "' is not supported by cserve yet (supported: " +
                       kServed + ")");
  else
    throw NotSupported(source + ": Unknown quantization method: " + method + ". Must be one of " + kServed + ".");
  return q;
}

void apply_quantization_flag(QuantizationConfig& q, const std::string& flag, bool gguf_file) {
  if (flag.empty()) return;
  if (!known_to_vllm(flag))
    throw InvalidArgument("Unknown quantization method: " + flag + ". Must be one of " + kServed + ".");
  std::string method = flag;
  if (flag == "awq_marlin") method = "awq";
  if (flag == "gptq_marlin") method = "gptq";
  const std::string served = std::string(",") + kServed + ",";
  const std::string in_file = gguf_file ? "gguf" : q.method;
  if (served.find(", " + flag + ",") == std::string::npos && served.find("," + flag + ",") == std::string::npos)
    throw NotSupported("quantization method '" + flag + "' is not supported by cserve yet (supported: " + kServed + ")");
  if (method == "fp8" && in_file.empty()) {  // vLLM's online fp8: the float weights quantized at load
    q.method = "fp8";
    q.bits = 8;
    q.fp8 = q.online = true;
    return;
  }
  if (method != in_file)
    throw InvalidArgument("Quantization method specified in the model config (" +
                          (in_file.empty() ? std::string("none") : in_file) +
                          ") does not match the quantization method specified in the `quantization` argument (" +
                          flag + ").");
}

}  // namespace cserve
