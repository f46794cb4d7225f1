// The CPU implementation of Backend: thin adapters over the kernels in kernels.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <cstring>
#include <functional>
#include <string>
#include <memory>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/qgemm.h"
#include "cserve/error.h"
#include "util/env.h"
#include "util/thread_pool.h"

namespace cserve {

namespace {

class CpuLinear : public LinearWeight {
 public:
  explicit CpuLinear(cpu::PackedMatrix m) : m_(std::move(m)) {}
  int64_t n() const override { return m_.n; }
  int64_t k() const override { return m_.k; }
  size_t bytes() const override { return m_.data.size() + m_.bias.size() * sizeof(float); }
  const cpu::PackedMatrix& matrix() const { return m_; }

 private:
  cpu::PackedMatrix m_;
};

class CpuQuantLinear : public LinearWeight {
 public:
  explicit CpuQuantLinear(cpu::QuantMatrix m) : m_(std::move(m)) {}
  int64_t n() const override { return m_.n; }
  int64_t k() const override { return m_.k; }
  size_t bytes() const override {
    return m_.codes.size() + m_.scales.size() + m_.mins.size() + m_.bias.size() * sizeof(float);
  }
  const cpu::QuantMatrix& matrix() const { return m_; }

 private:
  cpu::QuantMatrix m_;
};

// The CUDA sampler and logits processors (cuda/sampling/) on the host, for greedy rows.
void emulated_device_sample(const Tensor& logits, const std::vector<DeviceSamplingRow>& rows, int num_top,
                            const DeviceProcessing* processing, DeviceSamplingResult& out) {
  const int64_t vocab = logits.dim(1), n = static_cast<int64_t>(rows.size());
  const float neg_inf = -std::numeric_limits<float>::infinity();
  out = DeviceSamplingResult{};
  std::vector<float> l;
  for (int64_t row = 0; row < n; ++row) {
    if (rows[row].temperature != 0.0f) throw NotSupported("the CPU's device-sampling emulation is greedy only");
    const float* raw = logits.as<float>() + row * vocab;
    l.assign(raw, raw + vocab);
    if (processing) {
      const DeviceProcessorRow& p = processing->rows[row];
      const auto& ids = processing->ids;
      const auto& values = processing->values;
      if (p.grammar_end > p.grammar_begin)
        for (int64_t t = 0; t < vocab; ++t)
          if (!((static_cast<uint32_t>(ids[p.grammar_begin + t / 32]) >> (t % 32)) & 1u)) l[t] = neg_inf;
      if (p.allowed_end > p.allowed_begin) {
        std::vector<char> keep(static_cast<size_t>(vocab), 0);
        for (int32_t i = p.allowed_begin; i < p.allowed_end; ++i) keep[ids[i]] = 1;
        for (int64_t t = 0; t < vocab; ++t)
          if (!keep[t]) l[t] = neg_inf;
      }
      for (int32_t i = p.bias_begin; i < p.bias_end; ++i) l[ids[i]] += values[i];
      for (int32_t i = p.masked_begin; i < p.masked_end; ++i) l[ids[i]] = neg_inf;
      if (p.repetition_penalty != 1.0f)
        for (int32_t i = p.seen_begin; i < p.seen_end; ++i)
          l[ids[i]] = l[ids[i]] > 0.0f ? l[ids[i]] / p.repetition_penalty : l[ids[i]] * p.repetition_penalty;
      if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f)
        for (int32_t i = p.counts_begin; i < p.counts_end; ++i)
          l[ids[i]] -= p.frequency_penalty * values[i] + p.presence_penalty;
    }
    for (float& v : l) v = v == v ? v : neg_inf;  // NaN is impossible, as in the kernel
    const int32_t chosen = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    const float mx = *std::max_element(raw, raw + vocab);
    double z = 0;
    for (int64_t t = 0; t < vocab; ++t) z += std::exp(static_cast<double>(raw[t] - mx));
    const float log_z = mx + static_cast<float>(std::log(z));
    int32_t rank = 1;
    for (int64_t t = 0; t < vocab; ++t) rank += raw[t] > raw[chosen];
    out.ids.push_back(chosen);
    out.ranks.push_back(rank);
    out.logprobs.push_back(raw[chosen] - log_z);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + num_top, order.end(),
                      [&](int32_t a, int32_t b) { return raw[a] != raw[b] ? raw[a] > raw[b] : a < b; });
    for (int j = 0; j < num_top; ++j) {
      out.top_ids.push_back(order[j]);
      out.top_logprobs.push_back(raw[order[j]] - log_z);
    }
  }
}

const cpu::PackedMatrix& packed(const LinearWeight& w) { return static_cast<const CpuLinear&>(w).matrix(); }
const cpu::QuantMatrix* quantized(const LinearWeight& w) {
  const auto* q = dynamic_cast<const CpuQuantLinear*>(&w);
  return q ? &q->matrix() : nullptr;
}

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(num_threads) {
    emulate_graphs_ = env_flag("CSERVE_CPU_EMULATE_GRAPHS");
    emulate_sampling_ = env_flag("CSERVE_CPU_EMULATE_DEVICE_SAMPLING");
  }
  std::string name() const override {
    // The quantized GEMM's AVX-VNNI use is named where it runs (an AVX2 level on a CPU with it).
    const bool avx_vnni = std::string(cpu::qgemm_kernel_name()) == "avx2_vnni";
    return std::string("cpu (") + cpu::isa_name(cpu::cpu_isa()) + (avx_vnni ? " + avx_vnni" : "") +
           (cpu::cpu_has_amx() ? " + amx" : "") + ")";
  }
  DType activation_dtype() const override { return DType::F32; }
  int num_threads() const override { return pool_.num_threads(); }
  Buffer allocate(size_t bytes) override { return Buffer(bytes); }
  bool host_memory() const override { return true; }
  void upload(void* dst, const void* host_src, size_t bytes) override { std::memcpy(dst, host_src, bytes); }
  void download(void* host_dst, const void* src, size_t bytes) override { std::memcpy(host_dst, src, bytes); }
  void gather_rows(const Tensor& src, const int32_t* rows, int64_t n, int64_t cols, Tensor& out) override {
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(out.as<float>() + i * cols, src.as<float>() + rows[i] * cols, static_cast<size_t>(cols) * sizeof(float));
  }

  std::unique_ptr<LinearWeight> pack_linear(const std::vector<Tensor>& parts, const std::vector<Tensor>& biases,
                                            DType dtype) override {
    return std::make_unique<CpuLinear>(cpu::pack_matrix(parts, biases, dtype));
  }
  std::unique_ptr<LinearWeight> pack_linear_quantized(const std::vector<QuantPart>& parts) override {
    return std::make_unique<CpuQuantLinear>(cpu::pack_quant_matrix(parts, pool_));
  }
  void linear(const LinearWeight& w, const Tensor& x, int64_t ldx, Tensor& y, int64_t ldy, bool accumulate) override {
    if (const cpu::QuantMatrix* q = quantized(w)) {
      cpu::qgemm(*q, x.as<float>(), x.dim(0), ldx, y.as<float>(), ldy, accumulate, pool_);
      return;
    }
    cpu::gemm(packed(w), x.as<float>(), x.dim(0), ldx, y.as<float>(), ldy, accumulate, pool_);
  }
  void mlp(const LinearWeight& gate_up, const LinearWeight& down, const Tensor& x, int64_t ldx, GatedActivation act,
           Tensor& gate_up_buf, Tensor& act_buf, Tensor& out, int64_t ldo, bool accumulate) override {
    const int64_t m = x.dim(0), half = gate_up.n() / 2;
    if (quantized(gate_up) == nullptr && quantized(down) == nullptr &&
        cpu::gemm_mlp(packed(gate_up), packed(down), x.as<float>(), m, ldx, act, out.as<float>(), ldo, accumulate,
                      pool_))
      return;
    if (quantized(gate_up) == nullptr &&
        cpu::gemm_gated(packed(gate_up), x.as<float>(), m, ldx, act, act_buf.as<float>(), half, pool_)) {
      linear(down, act_buf, half, out, ldo, accumulate);
      return;
    }
    Backend::mlp(gate_up, down, x, ldx, act, gate_up_buf, act_buf, out, ldo, accumulate);
  }
  void host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override {
    pool_.parallel_for(n, 1, fn);
  }
  void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    cpu::embedding(table, ids, n, out.as<float>());
  }
  void embedding(const LinearWeight& w, const int32_t* ids, int64_t n, Tensor& out) override {
    if (const cpu::QuantMatrix* q = quantized(w)) {
      cpu::qgather_rows(*q, ids, n, out.as<float>());
      return;
    }
    cpu::gather_rows(packed(w), ids, n, out.as<float>());
  }
  void rms_norm(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld, float eps,
                Tensor& out) override {
    cpu::rms_norm(x.as<float>(), weight.as<float>(), rows, dim, ld, eps, out.as<float>(), pool_);
  }
  void rms_norm_add(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld, float eps,
                    Tensor& residual) override {
    cpu::rms_norm_add(x.as<float>(), weight.as<float>(), rows, dim, ld, eps, residual.as<float>(), pool_);
  }
  void silu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) override {
    cpu::silu_mul(gate_up.as<float>(), tokens, inter, out.as<float>(), pool_);
  }
  void gelu_tanh_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) override {
    cpu::gelu_tanh_mul(gate_up.as<float>(), tokens, inter, out.as<float>(), pool_);
  }
  void softcap(Tensor& x, int64_t n, float cap) override { cpu::softcap(x.as<float>(), n, cap, pool_); }
  void scale(Tensor& x, int64_t n, float factor) override {
    float* p = x.as<float>();
    pool_.parallel_for(n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p[i] *= factor;
    });
  }
  void clamped_swiglu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, float alpha, float limit,
                          Tensor& out) override {
    cpu::clamped_swiglu_mul(gate_up.as<float>(), tokens, inter, alpha, limit, out.as<float>(), pool_);
  }
  void combine_rows(const Tensor& src, const int32_t* rows, const float* weights, int64_t n, int64_t k, int64_t cols,
                    Tensor& out, bool accumulate) override {
    cpu::combine_rows(src.as<float>(), rows, weights, n, k, cols, out.as<float>(), accumulate, pool_);
  }
  void rope(Tensor& x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const Tensor& cos,
            const Tensor& sin, int64_t rotary_dim) override {
    cpu::rope(x.as<float>(), tokens, heads, head_dim, ld, cos.as<float>(), sin.as<float>(), rotary_dim, pool_);
  }
  void attention(const Tensor& q, int64_t ldq, int64_t num_heads, const Tensor& k, const Tensor& v, int64_t ldkv,
                 KVCacheLayer& cache, const AttentionMetadata& meta, const AttentionOptions& o, Tensor& out) override {
    const cpu::NewKV fresh{k.as<float>(), v.as<float>(), ldkv};
    cpu::paged_attention(q.as<float>(), ldq, num_heads, cache, meta, o.scale, o.sliding_window, out.as<float>(), pool_,
                         o.softcap, o.sinks, &fresh);
  }
  void copy_blocks(KVCacheLayer& cache, const std::vector<std::pair<int32_t, int32_t>>& pairs) override {
    cpu::copy_blocks(cache, pairs);
  }

  // Graph emulation for tests: "capturing" records the size, "replaying" runs the padded
  // forward eagerly, so the runner's padding path runs end to end on the CPU (no speed-up).
  // As on a GPU, each size must have run eagerly just before its capture (there: cuBLASLt's
  // heuristics and lazily loaded kernels, which a capture must not meet).
  bool graphs_supported() const override { return emulate_graphs_; }
  void begin_forward(const AttentionMetadata& meta) override { last_forward_tokens_ = meta.num_tokens; }
  bool capture_graph(int64_t key, const std::function<void()>& forward, std::string& why) override {
    if (!emulate_graphs_) {
      why = "the CPU backend has no graphs";
      return false;
    }
    if (last_forward_tokens_ != key) {
      why = "size " + std::to_string(key) + " did not run eagerly before its capture";
      return false;
    }
    return true;
  }
  void replay_graph(int64_t key, const std::function<void()>& forward) override { forward(); }

  // Device-sampling emulation for tests of the runner's side (the processor ranges it builds,
  // the results it maps back): the CUDA sampler's semantics on the host, greedy rows only.
  bool can_sample() const override { return emulate_sampling_; }
  void sample(const Tensor& logits, const std::vector<DeviceSamplingRow>& rows, int num_top,
              const DeviceProcessing* processing, DeviceSamplingResult& out) override {
    emulated_device_sample(logits, rows, num_top, processing, out);
  }

 private:
  ThreadPool pool_;
  bool emulate_graphs_ = false, emulate_sampling_ = false;
  int64_t last_forward_tokens_ = -1;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) { return std::make_unique<CpuBackend>(num_threads); }

}  // namespace cserve
