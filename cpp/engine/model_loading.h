// A model's files opened and this rank's weights packed on a new backend: what the engine
// (rank 0) and every other tensor-parallel rank do first.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "cserve/engine_config.h"
#include "loader/gguf.h"
#include "loader/safetensors.h"
#include "model/llama_model.h"
#include "model/tensor_parallel.h"

namespace cserve {

struct LoadedModel {
  // With both tensor and pipeline parallelism: this rank's stage group and pipeline group, which
  // the model's collectives use (declared first: they outlive the model).
  std::vector<std::unique_ptr<Communicator>> groups;
  ModelConfig config;  // the whole model's (the model computes with rank_config's)
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;  // must outlive the model: weights may point into it
  std::unique_ptr<Backend> backend;
  // On a device backend: the device communicators the model's collectives use, over `groups`
  // or the caller's communicator (declared after the backend: they hold its stream).
  std::vector<std::unique_ptr<Communicator>> device_groups;
  std::unique_ptr<LlamaModel> model;
  DType dtype = DType::BF16, kv_dtype = DType::BF16;
  int64_t weight_bytes = 0;
  std::vector<int64_t> eos_token_ids;  // config.json's, then generation_config.json's
  bool on_device = false;
  size_t free_at_start = 0, total_bytes = 0;  // device memory before the weights (on_device)
};

// Rank `rank` of the config's parallel group (tensor_parallel_size x pipeline_parallel_size
// ranks, meeting in `comm`, a host communicator). On CUDA each rank takes its own GPU
// (rank_device) and its collectives go through device communicators made over the host ones.
LoadedModel load_model(const EngineConfig& config, int rank = 0, Communicator* comm = nullptr);

}  // namespace cserve
