#include "engine/model_loading.h"

#include <algorithm>
#include <vector>

#include "core/dtype.h"
#include "cserve/error.h"
#include "engine/engine_setup.h"
#include "backend/device_communicator.h"
#include "comm/communicator.h"
#include "engine/group_communicator.h"
#include "loader/gguf_model.h"
#include "util/logging.h"

namespace cserve {

LoadedModel load_model(const EngineConfig& c, int rank, Communicator* comm) {
  LoadedModel m;
  // A .gguf path (or --load-format gguf) is one file holding the config and the weights.
  const bool from_gguf = c.load_format == "gguf" || (c.load_format == "auto" && is_gguf_path(c.model));
  if (from_gguf) {
    if (!is_gguf_path(c.model)) throw InvalidArgument("load_format gguf needs a .gguf file, got " + c.model);
    m.gguf = std::make_unique<GgufFile>(c.model);
    m.config = gguf_model_config(*m.gguf);
    if (!c.hf_overrides.empty() || !c.hf_config_path.empty())
      throw NotSupported("hf_overrides and hf_config_path apply to config.json models, not to a GGUF file");
  } else {
    m.config = load_model_config(c.hf_config_path.empty() ? c.model : c.hf_config_path, c.hf_overrides);
  }
  ModelConfig& mc = m.config;
  apply_quantization_flag(mc.quantization, c.quantization, from_gguf);
  if (mc.quantization.enabled() && mc.residual_multiplier != mc.embedding_multiplier)
    throw NotSupported(c.model + ": quantized checkpoints of models with residual / embedding multipliers (Granite) "
                       "are not supported yet");
  if (c.disable_sliding_window) {
    for (int64_t w : mc.layer_sliding_window) mc.disabled_sliding_window = std::max(mc.disabled_sliding_window, w);
    mc.layer_sliding_window.assign(mc.layer_sliding_window.size(), 0);
  }
  const int tp_size = std::max(1, c.tensor_parallel_size), pp_size = std::max(1, c.pipeline_parallel_size);
  check_tensor_parallel(mc, tp_size);
  // World rank = stage * tp_size + tp_rank (the ranks of a stage are consecutive, as vLLM's).
  const int tp_rank = rank % tp_size, stage = rank / tp_size;
  Communicator* tp_comm = comm;
  Communicator* pp_comm = comm;
  if (tp_size > 1 && pp_size > 1) {
    // Each stage's ranks all-reduce among themselves; rank i of each stage hands its hidden
    // states to rank i of the next. Every rank joins its two groups in the same order.
    const std::string& g = c.tensor_parallel_group;
    m.groups.push_back(make_group_communicator(c, g + "-tp" + std::to_string(stage), tp_rank, tp_size, false));
    m.groups.push_back(make_group_communicator(c, g + "-pp" + std::to_string(tp_rank), stage, pp_size, false));
    tp_comm = m.groups[0].get();
    pp_comm = m.groups[1].get();
  }
  TensorParallel tp = tp_size > 1 ? TensorParallel{tp_rank, tp_size, tp_comm} : TensorParallel{};
  PipelineStage pp = pp_size > 1 ? pipeline_stage(mc, stage, pp_size, pp_comm) : PipelineStage{};
  const int micro_batches = c.pipeline_micro_batches > 0 ? c.pipeline_micro_batches : 2 * pp_size;
  if (pp_size > 1 && micro_batches > 1) {
    // Two-rank groups between neighbouring stages (rank i of each), so that a hand-over holds up
    // only the two stages it joins. Made previous-first: stage s joins (s-1, s), which stage s-1
    // made, before making (s, s+1), so the chain of waits always ends.
    const std::string g = c.tensor_parallel_group + "-pair" + std::to_string(tp_rank) + "-";
    if (stage > 0) {
      m.groups.push_back(make_group_communicator(c, g + std::to_string(stage - 1), 1, 2, false));
      pp.prev = m.groups.back().get();
    }
    if (stage + 1 < pp_size) {
      m.groups.push_back(make_group_communicator(c, g + std::to_string(stage), 0, 2, false));
      pp.next = m.groups.back().get();
    }
    pp.micro_batches = micro_batches;
  }
  m.dtype = resolve_dtype(c.dtype, mc);
  if (mc.embedding_scale != 1.0) {
    // Gemma's embedding scale sqrt(hidden_size) is a tensor of the compute dtype in transformers
    // and vLLM (55.43 is 55.5 in bf16): the same rounding here.
    const float exact = static_cast<float>(mc.embedding_scale);
    std::vector<uint8_t> held(dtype_size(m.dtype));
    float rounded = exact;
    convert_from_f32(&exact, held.data(), m.dtype, 1);
    convert_to_f32(held.data(), m.dtype, &rounded, 1);
    mc.embedding_scale = rounded;
  }
  m.kv_dtype = c.kv_cache_dtype == "auto" ? m.dtype : parse_kv_cache_dtype(c.kv_cache_dtype);
  m.eos_token_ids = mc.eos_token_ids;
  for (int64_t e : from_gguf ? std::vector<int64_t>{} : load_generation_eos(c.model))
    if (std::find(m.eos_token_ids.begin(), m.eos_token_ids.end(), e) == m.eos_token_ids.end())
      m.eos_token_ids.push_back(e);

  const bool parallel = tp_size * pp_size > 1;
  m.backend = make_backend(parallel ? rank_device(c.device, rank) : c.device, c.num_threads);
  // A device's memory in use before this engine put anything on it: other engines and
  // processes are not charged to this one's gpu_memory_utilization (vLLM's per-instance meaning).
  m.on_device = m.backend->device_memory(m.free_at_start, m.total_bytes);
  if (parallel && !m.backend->host_memory()) {
    // The model's collectives on the device; the host groups stay for the step messages. Made
    // after the measure above: NCCL's and the IPC buffers' memory is this engine's.
    DeviceCommunicatorOptions options;
    options.custom_all_reduce = !c.disable_custom_all_reduce;
    options.timeout_s = c.tensor_parallel_timeout;
    auto on_device = [&](Communicator* host) -> Communicator* {
      if (!host) return nullptr;
      m.device_groups.push_back(make_device_communicator(*m.backend, *host, options));
      return m.device_groups.back().get();
    };
    tp.comm = on_device(tp.enabled() ? tp.comm : nullptr);
    pp.comm = (tp.comm && pp.comm == comm) ? tp.comm : on_device(pp.enabled() ? pp.comm : nullptr);
    pp.prev = pp.next = nullptr;  // micro-batches run on the CPU only (see micro_batch_count)
  }
  if (m.backend->host_memory() && m.kv_dtype != m.dtype)
    throw NotSupported("kv_cache_dtype " + c.kv_cache_dtype + " needs the CUDA backend (on the CPU the KV cache "
                       "follows --dtype)");
  const SafetensorsCheckpoint* ckpt = nullptr;
  if (!from_gguf && (c.load_format == "auto" || c.load_format == "safetensors")) {
    m.checkpoint = std::make_unique<SafetensorsCheckpoint>(c.model);
    ckpt = m.checkpoint.get();
  } else if (!from_gguf && c.load_format != "dummy") {
    throw NotSupported("load_format " + c.load_format +
                       " is not supported yet (supported: auto, safetensors, gguf, dummy)");
  }
  if (is_fp8(m.kv_dtype) && ckpt &&
      (ckpt->has("model.layers.0.self_attn.k_scale") || ckpt->has("model.layers.0.self_attn.kv_scale")))
    log_warning("the checkpoint's k/v scales are not applied yet: the fp8 KV cache uses scale 1.0");
  ModelWeights weights = load_weights(mc, ckpt, m.dtype, *m.backend, static_cast<uint64_t>(c.seed), c.load_progress,
                                      m.gguf.get(), tp, pp);
  m.weight_bytes = static_cast<int64_t>(weights.total_bytes);
  ModelConfig local = rank_config(mc, tp.rank, tp.size);
  if (pp.enabled()) local.num_hidden_layers = pp.num_layers;
  m.model = std::make_unique<LlamaModel>(local, *m.backend, std::move(weights), tp, pp);
  return m;
}

}  // namespace cserve
