// The operations a model needs from a device. The CPU backend implements them
// with the kernels of cpu/; the CUDA backend (cuda/, its own shared library loaded
// by make_backend) implements the same interface. Activations are Tensors of activation_dtype()
// that the backend allocated; weights are opaque handles the backend packed at load.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/attention_metadata.h"
#include "backend/gated_activation.h"
#include "core/buffer.h"
#include "core/quant.h"
#include "core/tensor.h"
#include "cserve/error.h"

namespace cserve {

// A weight matrix W[n][k] packed for y = x W^T (+ bias).
class LinearWeight {
 public:
  virtual ~LinearWeight() = default;
  virtual int64_t n() const = 0;
  virtual int64_t k() const = 0;
  virtual size_t bytes() const = 0;
};

// One part of a quantized linear weight as a GGUF file stores it: `rows` rows of `cols`
// values of ggml type `type`; row r at data + r * row_stride, or row row_order[r] when
// row_order is set (llama.cpp permutes q/k rows). Optional bias of `rows` floats.
// k_order (cols entries, or null for the natural order): value j of each row multiplies input
// feature k_order[j] (GPTQ act-order, whose quantization groups are contiguous only so).
struct QuantPart {
  GgmlType type = GgmlType::Q8_0;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0;
  size_t row_stride = 0;
  const float* bias = nullptr;
  const int32_t* row_order = nullptr;
  const int32_t* k_order = nullptr;
};

// One row of sampling done by the backend itself (the parameters of the CUDA sampler): greedy
// when temperature is 0, else temperature, top_k (0: all), top_p, min_p, and a draw from the
// counter-based generator at (seed, offset).
struct DeviceSamplingRow {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t offset = 0;
};
// Per row: the token, its raw logprob and 1-based rank; then [rows][num_top] top ids and logprobs.
struct DeviceSamplingResult {
  std::vector<int32_t> ids, ranks;
  std::vector<float> logprobs;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};
constexpr int kMaxDeviceTopLogprobs = 64;
// The logits processors and penalties of each row, applied before sampling in the CPU
// sampler's order (the layout of the CUDA kernel's ProcessorRow): ranges of the shared `ids`
// (and `values`, parallel to it) for the grammar's token mask (ceil(vocab / 32) words, bit
// t % 32 of word t / 32 set where token t is allowed), the allowed ids, bias pairs, masked ids (EOS and stop ids
// before min_tokens), distinct seen ids (repetition penalty) and distinct output ids with
// their counts (frequency and presence penalties).
struct DeviceProcessorRow {
  int32_t grammar_begin = 0, grammar_end = 0;
  int32_t allowed_begin = 0, allowed_end = 0;
  int32_t bias_begin = 0, bias_end = 0;
  int32_t masked_begin = 0, masked_end = 0;
  int32_t seen_begin = 0, seen_end = 0;
  int32_t counts_begin = 0, counts_end = 0;
  float repetition_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
};
struct DeviceProcessing {
  std::vector<DeviceProcessorRow> rows;
  std::vector<int32_t> ids;
  std::vector<float> values;
};

// One layer's attention settings: the scale of q.k; the sliding window (0: none); Gemma 2's cap
// on the scaled scores (s -> softcap * tanh(s / softcap); 0: none); gpt-oss's sinks: per head
// (num_heads f32 in backend memory; null: none) a logit that joins the softmax's denominator
// and attends to nothing.
struct AttentionOptions {
  float scale = 1.0f;
  int64_t sliding_window = 0;
  float softcap = 0.0f;
  const float* sinks = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual DType activation_dtype() const = 0;
  virtual int num_threads() const = 0;
  virtual Buffer allocate(size_t bytes) = 0;
  // Whether allocate() returns memory the host reads and writes directly (the CPU). A device
  // backend copies with upload/download; the host arrays the ops below take as raw pointers
  // (token ids, slots, rows, attention metadata) stay host arrays that it copies itself.
  virtual bool host_memory() const = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  // out[i][:] = src[rows[i]][:], rows of `cols` f32 activations.
  virtual void gather_rows(const Tensor& src, const int32_t* rows, int64_t n, int64_t cols, Tensor& out) = 0;

  // Concatenates parts along n (e.g. q, k, v) and packs them as `dtype`.
  // biases: empty, or one per part (data == nullptr for a part without one).
  virtual std::unique_ptr<LinearWeight> pack_linear(const std::vector<Tensor>& parts,
                                                    const std::vector<Tensor>& biases, DType dtype) = 0;
  // Concatenates quantized parts along n; the weights stay quantized (4 or 8 bits per value).
  // Parts with a k_order must share it (the CPU permutes the activations once per GEMM).
  virtual std::unique_ptr<LinearWeight> pack_linear_quantized(const std::vector<QuantPart>& parts) = 0;
  // y (= or +=) x W^T + bias. x [m][k], y [m][n]; leading dims in elements.
  virtual void linear(const LinearWeight& w, const Tensor& x, int64_t ldx, Tensor& y, int64_t ldy,
                      bool accumulate) = 0;
  // A gated MLP: out [m][down.n] (= or +=) a down^T + down's bias, for a = act(g) * u and
  // [g | u] = x gate_up^T + bias (gate_up's first n / 2 rows the gate). gate_up_buf ([m][n]) and
  // act_buf ([m][n / 2]) are scratch that a backend with fused kernels need not write; the
  // default runs linear into the one, silu_mul / gelu_tanh_mul into the other, linear from it.
  virtual void mlp(const LinearWeight& gate_up, const LinearWeight& down, const Tensor& x, int64_t ldx,
                   GatedActivation act, Tensor& gate_up_buf, Tensor& act_buf, Tensor& out, int64_t ldo,
                   bool accumulate) {
    const int64_t m = x.dim(0), half = gate_up.n() / 2;
    linear(gate_up, x, ldx, gate_up_buf, gate_up.n(), false);
    if (act == GatedActivation::GeluTanh)
      gelu_tanh_mul(gate_up_buf, m, half, act_buf);
    else
      silu_mul(gate_up_buf, m, half, act_buf);
    linear(down, act_buf, half, out, ldo, accumulate);
  }
  // fn(begin, end) over [0, n) items of host work (sampling requests' rows) split over the host
  // threads the backend keeps (the CPU's pool); here, one call on this thread.
  virtual void host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (n > 0) fn(0, n);
  }
  // Rows of an embedding table (plain [rows][dim]) or of a packed weight (tied embeddings).
  virtual void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) = 0;
  virtual void embedding(const LinearWeight& w, const int32_t* ids, int64_t n, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld,
                        float eps, Tensor& out) = 0;
  // Per-head norms (q/k norms): each of `tokens` rows (stride ld) holds `heads` rows of `dim`,
  // each normalized in place with the same weight. The default is a rms_norm per token.
  virtual void rms_norm_heads(Tensor& x, const Tensor& weight, int64_t tokens, int64_t heads, int64_t dim, int64_t ld,
                              float eps) {
    for (int64_t t = 0; t < tokens; ++t) {
      Tensor xt{static_cast<char*>(x.data) + static_cast<size_t>(t * ld) * dtype_size(x.dtype), x.dtype, {heads, dim}};
      rms_norm(xt, weight, heads, dim, dim, eps, xt);
    }
  }
  // residual[r][:] += x[r][:] / sqrt(mean(x[r][:dim]^2) + eps) * weight: a norm on a sublayer's
  // output before its residual add (OLMo 2). Rows of `dim` with row stride ld for both.
  virtual void rms_norm_add(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld,
                            float eps, Tensor& residual) = 0;
  // out[t][i] = act(gate_up[t][i]) * gate_up[t][inter + i]: SiLU (SwiGLU), or GELU's tanh
  // approximation (GeGLU: Gemma's gelu_pytorch_tanh).
  virtual void silu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) = 0;
  virtual void gelu_tanh_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) = 0;
  // gpt-oss's experts: g = min(gate, limit), u = clamp(up, -limit, limit);
  // out = (u + 1) * g * sigmoid(alpha * g).
  virtual void clamped_swiglu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, float alpha, float limit,
                                  Tensor& out) = 0;
  // out[i][:] (= or +=) sum_j weights[i * k + j] * src[rows[i * k + j]][:] for i < n: each
  // token's expert outputs combined (mixtures of experts). Rows of `cols` f32; rows and weights
  // are host arrays.
  virtual void combine_rows(const Tensor& src, const int32_t* rows, const float* weights, int64_t n, int64_t k,
                            int64_t cols, Tensor& out, bool accumulate) = 0;
  // x[i] *= factor for i < n (Gemma's embedding scale).
  virtual void scale(Tensor& x, int64_t n, float factor) = 0;
  // x[i] = cap * tanh(x[i] / cap) for i < n (Gemma 2's soft-capped logits).
  virtual void softcap(Tensor& x, int64_t n, float cap) = 0;
  virtual void rope(Tensor& x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const Tensor& cos,
                    const Tensor& sin, int64_t rotary_dim) = 0;
  // This step's keys and values (k, v: [tokens][num_kv_heads][head_dim] rows, token stride ldkv)
  // into the cache at meta.slot_mapping, then each token's attention over its sequence's cache
  // (q: [tokens][num_heads][head_dim], token stride ldq; out: [tokens][num_heads * head_dim]).
  virtual void attention(const Tensor& q, int64_t ldq, int64_t num_heads, const Tensor& k, const Tensor& v,
                         int64_t ldkv, KVCacheLayer& cache, const AttentionMetadata& meta,
                         const AttentionOptions& options, Tensor& out) = 0;
  virtual void copy_blocks(KVCacheLayer& cache, const std::vector<std::pair<int32_t, int32_t>>& pairs) = 0;

  // Tensor parallelism's vocabulary shards. zero_rows_outside: row t of x ([rows][cols] f32,
  // row stride cols) becomes zeros unless begin <= ids[t] < end (ids: a host array of `rows`).
  // copy_rows_strided: dst[r][c] = src[r][c] for r < rows, c < cols (f32; row strides in
  // elements). The defaults work on host memory; a device backend overrides both.
  virtual void zero_rows_outside(Tensor& x, int64_t rows, int64_t cols, const int32_t* ids, int64_t begin,
                                 int64_t end) {
    require_host_memory("zero_rows_outside");
    for (int64_t t = 0; t < rows; ++t)
      if (ids[t] < begin || ids[t] >= end) std::fill_n(x.as<float>() + t * cols, cols, 0.0f);
  }
  virtual void copy_rows_strided(const Tensor& src, int64_t ld_src, Tensor& dst, int64_t ld_dst, int64_t rows,
                                 int64_t cols) {
    require_host_memory("copy_rows_strided");
    for (int64_t r = 0; r < rows; ++r) std::copy_n(src.as<float>() + r * ld_src, cols, dst.as<float>() + r * ld_dst);
  }

  // Called once at the start of each forward pass with its attention metadata, before any op
  // takes pointers into it: a device backend copies the host arrays over in one transfer.
  virtual void begin_forward(const AttentionMetadata& meta) {}
  // Free and total bytes of the backend's memory where it is a device of its own (the KV
  // cache is then sized from the device, as vLLM does); false for host memory.
  virtual bool device_memory(size_t& free_bytes, size_t& total_bytes) { return false; }
  // Whether sample() exists: a device backend samples where the logits are, so only token
  // ids (and the logprobs asked for) cross to the host.
  virtual bool can_sample() const { return false; }
  // logits: [rows.size()][vocab] f32 in backend memory (left unchanged: logprobs are of the
  // raw logits); processing: null, or one row per sampling row; num_top <= kMaxDeviceTopLogprobs.
  virtual void sample(const Tensor& logits, const std::vector<DeviceSamplingRow>& rows, int num_top,
                      const DeviceProcessing* processing, DeviceSamplingResult& out) {}

  // Graphs (CUDA graphs on the GPU; the CPU has none, but can emulate them for tests of the
  // runner's padding: CSERVE_CPU_EMULATE_GRAPHS=1). `forward` issues one forward pass of this
  // backend's ops for a batch whose shape depends only on `key`.
  virtual bool graphs_supported() const { return false; }
  // capture_graph records it as graph `key` (the first capture sizes the pinned staging the
  // graphs copy their host inputs from, from the forward run just before); false when this
  // backend has no graphs or the capture failed (then the reason is in `why`).
  virtual bool capture_graph(int64_t key, const std::function<void()>& forward, std::string& why) {
    why = "this backend has no graphs";
    return false;
  }
  // Runs `forward` only for its host side (the ops refresh the host inputs the graph copies
  // and launch nothing), then launches graph `key`.
  virtual void replay_graph(int64_t key, const std::function<void()>& forward) {}

 protected:
  void require_host_memory(const char* op) const {
    if (!host_memory()) throw NotSupported("backend " + name() + " does not implement " + op);
  }
};

std::unique_ptr<Backend> make_cpu_backend(int num_threads);

// The backend for `device`: "cpu"; "cuda" or "cuda:N" (the CUDA backend library, loaded at
// run time, and its GPU N); "auto": CUDA when that library loads and sees a GPU, else the CPU.
// Throws NotSupported naming what is missing when "cuda" cannot be had.
std::unique_ptr<Backend> make_backend(const std::string& device, int num_threads);

// What make_backend("auto") would pick: "cuda" or "cpu" (and why, in `reason`).
std::string resolve_device(const std::string& device, std::string* reason = nullptr);

// The device of rank `rank` of a tensor/pipeline-parallel engine asking for `device`: "cpu", or
// on CUDA its own GPU, cuda:<rank mod the visible GPUs> (the launcher refuses fewer GPUs than
// ranks on one host). InvalidArgument for "cuda:N": the ranks pick their GPUs themselves
// (CUDA_VISIBLE_DEVICES chooses which GPUs they see).
std::string rank_device(const std::string& device, int rank);

}  // namespace cserve
