// The CUDA implementation of Backend, built into libcserve_cuda.so (loaded by make_backend).
//
// Weights live on the GPU in the compute dtype (bf16 by default) as plain [n][k] rows, or,
// quantized, as codes with block scales (cuda/quant);
// activations stay f32 (the model's arithmetic is unchanged from the CPU's), and each GEMM
// rounds its input to the weight dtype and accumulates into f32 through cuBLASLt. The host
// arrays an op takes (token ids, slots, attention metadata) are copied over on the backend's
// stream: the metadata once per forward (begin_forward), in one transfer from pinned memory.
// Everything runs on one stream, so reusing a scratch region is ordered after its last reader.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "activation/silu_mul.h"
#include "attention/kv_cache.h"
#include "attention/paged_attention.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_communicator.h"
#include "backend/cuda/cuda_device_access.h"
#include "backend/cuda/cuda_quant_linear.h"
#include "backend/cuda/cuda_util.h"
#include "backend/device_communicator.h"
#include "backend/cuda_entry.h"
#include "core/quant.h"
#include "cserve/error.h"
#include "elementwise/convert.h"
#include "embedding/embedding.h"
#include "embedding/vocab_shard.h"
#include "gemm/cublaslt_gemm.h"
#include "moe/combine_rows.h"
#include "norm/rms_norm.h"
#include "quant/quant_kernels.h"
#include "quant/quant_linear.h"
#include "rope/rope.h"
#include "sampling/sampler.h"
#include "util/env.h"

namespace cserve {

namespace {

using cuda_util::check;
using cuda_util::dtype_id;

class CudaLinear : public LinearWeight {
 public:
  CudaLinear(Buffer w, Buffer bias, int64_t n, int64_t k, DType dtype)
      : w_(std::move(w)), bias_(std::move(bias)), n_(n), k_(k), dtype_(dtype) {}
  int64_t n() const override { return n_; }
  int64_t k() const override { return k_; }
  size_t bytes() const override { return w_.size() + bias_.size(); }
  const void* data() const { return w_.data(); }
  const float* bias() const { return bias_.size() ? bias_.as<float>() : nullptr; }
  DType dtype() const { return dtype_; }

 private:
  Buffer w_, bias_;
  int64_t n_, k_;
  DType dtype_;
};

const CudaLinear& cuda_linear(const LinearWeight& w) { return static_cast<const CudaLinear&>(w); }

class CudaBackend : public Backend, public CudaDeviceAccess {
 public:
  explicit CudaBackend(int ordinal) : ordinal_(ordinal) {
    check(cudaSetDevice(ordinal), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
    name_ = "cuda:" + std::to_string(ordinal) + " (" + prop.name + ", sm_" + std::to_string(prop.major) +
            std::to_string(prop.minor) + ")";
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&staged_copy_done_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&graph_done_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming), "cudaEventCreate");
    gemm_ = std::make_unique<cuda::CublasLtGemm>();
    // CSERVE_CUDA_SIMPLE_KERNELS=1: attention by the per-token kernel alone (no prefill tiles,
    // no context splits), to tell a fault of the faster kernels from one elsewhere.
    simple_kernels_ = env_flag("CSERVE_CUDA_SIMPLE_KERNELS");
    // CSERVE_CUDA_DEQUANTIZE_WEIGHTS=1: quantized weights dequantized to bf16 at load and
    // multiplied by cuBLASLt, to tell a fault of the quantized kernels from one elsewhere.
    dequantize_weights_ = env_flag("CSERVE_CUDA_DEQUANTIZE_WEIGHTS");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    gemm_.reset();
    if (pinned_) cudaFreeHost(pinned_);
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    if (graph_pinned_) cudaFreeHost(graph_pinned_);
    if (upload_ring_) cudaFreeHost(upload_ring_);
    cudaEventDestroy(upload_done_);
    cudaEventDestroy(graph_done_);
    cudaEventDestroy(staged_copy_done_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  DType activation_dtype() const override { return DType::F32; }
  int num_threads() const override { return 1; }
  bool host_memory() const override { return false; }
  int ordinal() const override { return ordinal_; }
  cudaStream_t stream() const override { return stream_; }
  bool launches() const override { return mode_ == Mode::Eager || mode_ == Mode::Capture; }
  bool capturing() const override { return mode_ == Mode::Capture; }

  Buffer allocate(size_t bytes) override {
    use_device();
    return cuda_util::device_buffer(bytes, stream_);
  }
  // Eagerly a copy on the stream. While a graph is captured or replayed, the host data goes
  // to the next slot of the pinned staging, which a copy node of the graph reads at launch.
  void upload(void* dst, const void* host_src, size_t bytes) override {
    if (mode_ == Mode::Eager) {
      // Small uploads (token ids, rows, rope tables, sampling parameters) through pinned memory,
      // so the copy is asynchronous; large ones (weights at load) straight from the host.
      void* slot = bytes <= kUploadRingBytes / 4 ? upload_slot(bytes) : nullptr;
      if (slot) std::memcpy(slot, host_src, bytes);
      check(cudaMemcpyAsync(dst, slot ? slot : host_src, bytes, cudaMemcpyHostToDevice, stream_), "upload");
      if (slot) check(cudaEventRecord(upload_done_, stream_), "cudaEventRecord");
      return;
    }
    if (mode_ == Mode::Size) {
      graph_upload_bytes_ += staged_size(bytes);
      return;
    }
    void* slot = graph_slot(bytes);
    std::memcpy(slot, host_src, bytes);
    if (mode_ == Mode::Capture)
      check(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream_), "upload (graph)");
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (mode_ != Mode::Eager) throw Error("download inside a CUDA graph");
    check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "download");
    check(cudaStreamSynchronize(stream_), "download (synchronize)");
  }
  bool device_memory(size_t& free_bytes, size_t& total_bytes) override {
    use_device();
    check(cudaStreamSynchronize(stream_), "synchronize");
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    return true;
  }

  void gather_rows(const Tensor& src, const int32_t* rows, int64_t n, int64_t cols, Tensor& out) override {
    const int32_t* ids = upload_ids(rows, n);
    if (launches())
      cuda::invokeEmbedding(out.data, src.data, ids, n, cols, dtype_id(DType::F32), dtype_id(DType::F32), stream_);
  }

  void zero_rows_outside(Tensor& x, int64_t rows, int64_t cols, const int32_t* ids, int64_t begin,
                         int64_t end) override {
    const int32_t* dev_ids = upload_ids(ids, rows);
    if (launches()) cuda::invokeZeroRowsOutside(x.as<float>(), cols, rows, cols, dev_ids, begin, end, stream_);
  }
  void copy_rows_strided(const Tensor& src, int64_t ld_src, Tensor& dst, int64_t ld_dst, int64_t rows,
                         int64_t cols) override {
    if (!launches() || rows <= 0 || cols <= 0) return;
    check(cudaMemcpy2DAsync(dst.data, static_cast<size_t>(ld_dst) * sizeof(float), src.data,
                            static_cast<size_t>(ld_src) * sizeof(float), static_cast<size_t>(cols) * sizeof(float),
                            static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream_),
          "copy_rows_strided");
  }

  std::unique_ptr<LinearWeight> pack_linear(const std::vector<Tensor>& parts, const std::vector<Tensor>& biases,
                                            DType dtype) override {
    int64_t n = 0;
    const int64_t k = parts.empty() ? 0 : parts[0].dim(1);
    for (const Tensor& p : parts) {
      if (p.shape.size() != 2 || p.dim(1) != k) throw InvalidArgument("pack_linear: parts must be [rows][k] with one k");
      n += p.dim(0);
    }
    // Converted on the host part by part (rows over the host's cores), then copied over.
    std::vector<char> host(static_cast<size_t>(n * k) * dtype_size(dtype));
    int64_t row0 = 0;
    for (const Tensor& p : parts) {
      parallel_rows(p.dim(0), [&](int64_t begin, int64_t end) {
        std::vector<float> row_f32(static_cast<size_t>(k));
        for (int64_t r = begin; r < end; ++r) {
          convert_to_f32(static_cast<const char*>(p.data) + static_cast<size_t>(r * k) * dtype_size(p.dtype),
                         p.dtype, row_f32.data(), static_cast<size_t>(k));
          convert_from_f32(row_f32.data(), host.data() + static_cast<size_t>((row0 + r) * k) * dtype_size(dtype),
                           dtype, static_cast<size_t>(k));
        }
      });
      row0 += p.dim(0);
    }
    return finish_linear(host, dtype, n, k, host_bias(parts, biases, n));
  }

  // Quantized weights (GGUF, and AWQ / GPTQ / fp8 rows) stay codes with block scales
  // (cuda/quant); with CSERVE_CUDA_DEQUANTIZE_WEIGHTS they become bf16 rows instead.
  std::unique_ptr<LinearWeight> pack_linear_quantized(const std::vector<QuantPart>& parts) override {
    if (dequantize_weights_) return pack_linear_dequantized(parts);
    const HostQuantWeight host = pack_host_quant_weight(parts);
    auto to_device = [&](const void* data, size_t bytes) {
      Buffer b = allocate(bytes);
      if (bytes) upload(b.data(), data, bytes);
      return b;
    };
    auto w = std::make_unique<CudaQuantLinear>(
        host.layout, to_device(host.codes.data(), host.codes.size()),
        to_device(host.scales.data(), host.scales.size()),
        to_device(host.bias.data(), host.bias.size() * sizeof(float)),
        to_device(host.k_order.data(), host.k_order.size() * sizeof(int32_t)));
    // The host copies go out of scope when this returns: finish the transfers first.
    check(cudaStreamSynchronize(stream_), "weight upload");
    return w;
  }
  // An act-order part's columns go back to the natural order.
  std::unique_ptr<LinearWeight> pack_linear_dequantized(const std::vector<QuantPart>& parts) {
    int64_t n = 0;
    const int64_t k = parts.empty() ? 0 : parts[0].cols;
    for (const QuantPart& p : parts) {
      if (p.cols != k) throw InvalidArgument("pack_linear_quantized: parts differ in k");
      n += p.rows;
    }
    std::vector<char> host(static_cast<size_t>(n * k) * sizeof(uint16_t));
    std::vector<float> bias;
    int64_t row0 = 0;
    for (const QuantPart& p : parts) {
      parallel_rows(p.rows, [&](int64_t begin, int64_t end) {
        std::vector<float> row_f32(static_cast<size_t>(k)), permuted(p.k_order ? static_cast<size_t>(k) : 0);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t src_row = p.row_order ? p.row_order[r] : r;
          dequantize_row(p.type, p.data + static_cast<size_t>(src_row) * p.row_stride,
                         p.k_order ? permuted.data() : row_f32.data(), k);
          if (p.k_order)
            for (int64_t j = 0; j < k; ++j) row_f32[p.k_order[j]] = permuted[j];
          convert_from_f32(row_f32.data(), host.data() + static_cast<size_t>((row0 + r) * k) * sizeof(uint16_t),
                           DType::BF16, static_cast<size_t>(k));
        }
      });
      row0 += p.rows;
    }
    bool any_bias = false;
    for (const QuantPart& p : parts) any_bias = any_bias || p.bias != nullptr;
    if (any_bias) {
      for (const QuantPart& p : parts)
        for (int64_t r = 0; r < p.rows; ++r) bias.push_back(p.bias ? p.bias[r] : 0.0f);
    }
    return finish_linear(host, DType::BF16, n, k, bias);
  }

  void linear(const LinearWeight& weight, const Tensor& x, int64_t ldx, Tensor& y, int64_t ldy,
              bool accumulate) override {
    if (const auto* q = dynamic_cast<const CudaQuantLinear*>(&weight)) {
      quant_linear(*q, x, ldx, y, ldy, accumulate);
      return;
    }
    const CudaLinear& w = cuda_linear(weight);
    const int64_t m = x.dim(0), n = w.n(), k = w.k();
    if (m == 0) return;
    void* xs = w.dtype() == DType::F32
                   ? nullptr
                   : scratch(region(x_conv_, graph_x_conv_), static_cast<size_t>(m * k) * dtype_size(w.dtype()));
    if (!launches()) return;
    const int wdt = dtype_id(w.dtype()), f32 = dtype_id(DType::F32);
    if (w.dtype() == DType::F32) {
      gemm_->run(y.data, ldy, x.data, ldx, w.data(), m, n, k, f32, accumulate, stream_);
    } else {
      // x rounded to the weight dtype (as the CPU's bf16 kernels round it), product in f32.
      cuda::invokeConvertRows(xs, wdt, k, x.data, f32, ldx, m, k, stream_);
      gemm_->run(y.data, ldy, xs, k, w.data(), m, n, k, wdt, accumulate, stream_, f32);
    }
    if (w.bias()) cuda::invokeAddBias(y.as<float>(), ldy, w.bias(), m, n, stream_);
  }

  void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    const int32_t* dev_ids = upload_ids(ids, n);
    if (launches())
      cuda::invokeEmbedding(out.data, table.data, dev_ids, n, table.dim(1), dtype_id(DType::F32),
                            dtype_id(table.dtype), stream_);
  }
  void embedding(const LinearWeight& weight, const int32_t* ids, int64_t n, Tensor& out) override {
    const int32_t* dev_ids = upload_ids(ids, n);
    if (const auto* q = dynamic_cast<const CudaQuantLinear*>(&weight)) {
      if (launches()) cuda::invokeQuantGatherRows(out.as<float>(), q->view(), dev_ids, n, stream_);
      return;
    }
    const CudaLinear& w = cuda_linear(weight);
    if (launches())
      cuda::invokeEmbedding(out.data, w.data(), dev_ids, n, w.k(), dtype_id(DType::F32), dtype_id(w.dtype()),
                            stream_);
  }
  void rms_norm(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld, float eps,
                Tensor& out) override {
    if (!launches()) return;
    cuda::invokeRmsNorm(out.data, x.data, nullptr, weight.as<float>(), rows, dim, ld, eps, dtype_id(DType::F32),
                        stream_);
  }
  void rms_norm_heads(Tensor& x, const Tensor& weight, int64_t tokens, int64_t heads, int64_t dim, int64_t ld,
                      float eps) override {
    if (!launches()) return;
    cuda::invokeRmsNormHeads(x.data, x.data, nullptr, weight.as<float>(), tokens, heads, dim, ld, eps,
                             dtype_id(DType::F32), stream_);
  }
  void rms_norm_add(const Tensor& x, const Tensor& weight, int64_t rows, int64_t dim, int64_t ld, float eps,
                    Tensor& residual) override {
    if (!launches()) return;
    cuda::invokeRmsNormAdd(residual.data, x.data, weight.as<float>(), rows, dim, ld, eps, dtype_id(DType::F32),
                           stream_);
  }
  void silu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) override {
    if (!launches()) return;
    cuda::invokeSiluMul(out.data, gate_up.data, tokens, inter, dtype_id(DType::F32), stream_);
  }
  void gelu_tanh_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, Tensor& out) override {
    if (!launches()) return;
    cuda::invokeGeluTanhMul(out.data, gate_up.data, tokens, inter, dtype_id(DType::F32), stream_);
  }
  void combine_rows(const Tensor& src, const int32_t* rows, const float* weights, int64_t n, int64_t k, int64_t cols,
                    Tensor& out, bool accumulate) override {
    // Mixture-of-experts steps route on the host, so they never run inside a graph.
    const int32_t* dev_rows = upload_array(rows, n * k, moe_rows_dev_);
    const float* dev_weights = upload_array(weights, n * k, moe_weights_dev_);
    if (!launches()) return;
    cuda::invokeCombineRows(out.as<float>(), src.as<float>(), dev_rows, dev_weights, n, k, cols, accumulate, stream_);
  }
  void clamped_swiglu_mul(const Tensor& gate_up, int64_t tokens, int64_t inter, float alpha, float limit,
                          Tensor& out) override {
    if (!launches()) return;
    cuda::invokeClampedSwigluMul(out.data, gate_up.data, tokens, inter, alpha, limit, dtype_id(DType::F32), stream_);
  }
  void scale(Tensor& x, int64_t n, float factor) override {
    if (!launches()) return;
    cuda::invokeScale(x.as<float>(), n, factor, stream_);
  }
  void softcap(Tensor& x, int64_t n, float cap) override {
    if (!launches()) return;
    cuda::invokeSoftcap(x.data, n, cap, dtype_id(DType::F32), stream_);
  }
  void rope(Tensor& x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const Tensor& cos,
            const Tensor& sin, int64_t rotary_dim) override {
    if (!launches()) return;
    cuda::invokeRope(x.data, tokens, heads, head_dim, ld, cos.as<float>(), sin.as<float>(), rotary_dim,
                     dtype_id(DType::F32), stream_);
  }
  void attention(const Tensor& q, int64_t ldq, int64_t num_heads, const Tensor& k, const Tensor& v, int64_t ldkv,
                 KVCacheLayer& cache, const AttentionMetadata& meta, const AttentionOptions& o, Tensor& out) override {
    if (staged_.meta != &meta || staged_.slots_host != meta.slot_mapping.data()) begin_forward(meta);
    write_kv(k, v, meta.num_tokens, ldkv, meta.slot_mapping.data(), cache);
    cuda::PagedAttentionArgs a;
    a.out = out.data;
    a.q = q.data;
    a.ldq = ldq;
    a.num_tokens = meta.num_tokens;
    a.num_heads = num_heads;
    a.num_kv_heads = cache.k.dim(1);
    a.head_dim = cache.k.dim(3);
    a.k_cache = cache.k.data;
    a.v_cache = cache.v.data;
    a.block_size = cache.k.dim(2);
    a.block_tables = staged_.block_tables;
    a.max_blocks_per_seq = meta.max_blocks_per_seq;
    a.token_seq = staged_.token_seq;
    a.positions = staged_.positions;
    a.scale = o.scale;
    a.sliding_window = o.sliding_window;
    a.softcap = o.softcap;
    a.sinks = o.sinks;
    a.act_dtype = dtype_id(DType::F32);
    a.cache_dtype = dtype_id(cache.k.dtype);
    // The block table width bounds every context (for graph batches it is max_model_len's).
    a.max_context = static_cast<int64_t>(meta.max_blocks_per_seq) * cache.k.dim(2);
    if (!simple_kernels_ && meta.num_tokens > meta.num_seqs) {  // some sequence has several new tokens: tiles
      a.tiles = staged_.tiles;
      a.num_tiles = staged_.num_tiles;
      a.single_tokens = staged_.single_tokens;
      a.num_single_tokens = staged_.num_single_tokens;
    }
    // Graphs of every size share one workspace: it gets the most any split can need.
    int64_t floats = simple_kernels_ ? 0 : cuda::paged_attention_workspace(a);
    if (mode_ != Mode::Eager && floats > 0) floats = std::max(floats, cuda::paged_attention_max_workspace(a.head_dim));
    if (mode_ == Mode::Size && !simple_kernels_)
      floats = std::max(floats, cuda::paged_attention_max_workspace(a.head_dim));
    if (floats > 0)
      a.workspace = static_cast<float*>(scratch(region(attn_split_, graph_attn_split_), static_cast<size_t>(floats) * 4));
    if (!launches()) return;
    cuda::invokePagedAttention(a, stream_);
  }
  void copy_blocks(KVCacheLayer& cache, const std::vector<std::pair<int32_t, int32_t>>& pairs) override {
    use_device();
    const size_t block_bytes = static_cast<size_t>(cache.k.dim(1) * cache.k.dim(2) * cache.k.dim(3)) *
                               dtype_size(cache.k.dtype);
    for (const auto& [from, to] : pairs) {
      for (const Tensor* t : {&cache.k, &cache.v}) {
        char* base = static_cast<char*>(t->data);
        check(cudaMemcpyAsync(base + to * block_bytes, base + from * block_bytes, block_bytes,
                              cudaMemcpyDeviceToDevice, stream_),
              "copy_blocks");
      }
    }
  }

  bool can_sample() const override { return true; }
  void sample(const Tensor& logits, const std::vector<DeviceSamplingRow>& rows, int num_top,
              const DeviceProcessing* processing, DeviceSamplingResult& out) override {
    static_assert(sizeof(DeviceSamplingRow) == sizeof(cuda::SamplingRow), "one layout for both");
    static_assert(sizeof(DeviceProcessorRow) == sizeof(cuda::ProcessorRow), "one layout for both");
    const int64_t n = static_cast<int64_t>(rows.size());
    if (n == 0) return;
    use_device();
    const int64_t vocab = logits.dim(1);
    const size_t tops = static_cast<size_t>(n * num_top);
    // One device region: params, then ids, ranks, logprobs, top ids, top logprobs (4-byte fields).
    const size_t params_bytes = rows.size() * sizeof(DeviceSamplingRow);
    const size_t out_words = static_cast<size_t>(3 * n) + 2 * tops;
    char* d = static_cast<char*>(scratch(sample_dev_, params_bytes + out_words * 4));
    upload(d, rows.data(), params_bytes);
    int32_t* ids = reinterpret_cast<int32_t*>(d + params_bytes);
    int32_t* ranks = ids + n;
    float* lps = reinterpret_cast<float*>(ranks + n);
    int32_t* top_ids = reinterpret_cast<int32_t*>(lps + n);
    float* top_lps = reinterpret_cast<float*>(top_ids + tops);
    const float* sample_from = logits.as<float>();
    if (processing) {
      // Processed on a copy: the logprobs stay those of the raw logits, as the CPU sampler's.
      float* copy = static_cast<float*>(scratch(processed_logits_, static_cast<size_t>(n * vocab) * sizeof(float)));
      check(cudaMemcpyAsync(copy, sample_from, static_cast<size_t>(n * vocab) * sizeof(float), cudaMemcpyDeviceToDevice,
                            stream_),
            "copy logits");
      const size_t rows_bytes = processing->rows.size() * sizeof(DeviceProcessorRow);
      const size_t ids_bytes = processing->ids.size() * sizeof(int32_t);
      char* p = static_cast<char*>(scratch(processing_dev_, rows_bytes + 2 * ids_bytes + 16));
      upload(p, processing->rows.data(), rows_bytes);
      upload(p + rows_bytes, processing->ids.data(), ids_bytes);
      upload(p + rows_bytes + ids_bytes, processing->values.data(), ids_bytes);
      cuda::invokeProcessLogits(copy, n, vocab, reinterpret_cast<const cuda::ProcessorRow*>(p),
                                reinterpret_cast<const int32_t*>(p + rows_bytes),
                                reinterpret_cast<const float*>(p + rows_bytes + ids_bytes), stream_);
      sample_from = copy;
    }
    cuda::invokeSample(sample_from, logits.as<float>(), n, vocab, reinterpret_cast<const cuda::SamplingRow*>(d), ids, lps,
                       ranks, num_top, top_ids, top_lps, stream_);
    std::vector<char> host(out_words * 4);
    download(host.data(), ids, host.size());
    const int32_t* hi = reinterpret_cast<const int32_t*>(host.data());
    out.ids.assign(hi, hi + n);
    out.ranks.assign(hi + n, hi + 2 * n);
    const float* hl = reinterpret_cast<const float*>(hi + 2 * n);
    out.logprobs.assign(hl, hl + n);
    const int32_t* ht = reinterpret_cast<const int32_t*>(hl + n);
    out.top_ids.assign(ht, ht + tops);
    const float* htl = reinterpret_cast<const float*>(ht + tops);
    out.top_logprobs.assign(htl, htl + tops);
  }

  // Slots, positions, each token's sequence and the block tables, packed into pinned memory
  // and copied in one transfer.
  void begin_forward(const AttentionMetadata& meta) override {
    if (mode_ == Mode::Eager) use_device();
    const size_t T = static_cast<size_t>(meta.num_tokens), S = static_cast<size_t>(meta.num_seqs);
    const size_t tables = S * static_cast<size_t>(meta.max_blocks_per_seq);
    const size_t slots_bytes = T * sizeof(int64_t);
    // Prefill tiles: the new tokens of each sequence with several in runs of up to
    // kPrefillTileTokens; sequences with one (decodes) go to the per-token kernel.
    size_t num_tiles = 0, num_single = 0;
    for (size_t s = 0; s < S; ++s) {
      const size_t n = static_cast<size_t>(meta.query_start[s + 1] - meta.query_start[s]);
      if (n == 1) ++num_single;
      else num_tiles += (n + cuda::kPrefillTileTokens - 1) / cuda::kPrefillTileTokens;
    }
    const size_t ints = 2 * T + tables + 3 * num_tiles + num_single;
    const size_t bytes = slots_bytes + ints * sizeof(int32_t);
    char* d = static_cast<char*>(scratch(region(meta_dev_, graph_meta_dev_), bytes));
    char* h = nullptr;
    std::vector<char> sizing;
    if (mode_ == Mode::Size) {
      graph_upload_bytes_ = staged_size(bytes);  // a forward starts here
      sizing.resize(bytes);
      h = sizing.data();
    } else if (mode_ == Mode::Eager) {
      check(cudaEventSynchronize(staged_copy_done_), "staging (previous copy)");
      if (upload_cursor_ > kUploadRingBytes / 2) {  // start over here rather than in the middle of a forward
        check(cudaEventSynchronize(upload_done_), "upload ring");
        upload_cursor_ = 0;
      }
      if (pinned_bytes_ < bytes) {
        if (pinned_) cudaFreeHost(pinned_);
        pinned_ = nullptr;
        pinned_bytes_ = 0;
        check(cudaMallocHost(&pinned_, bytes * 2), "cudaMallocHost (metadata staging)");
        pinned_bytes_ = bytes * 2;
      }
      h = static_cast<char*>(pinned_);
    } else {
      h = static_cast<char*>(graph_slot(bytes));
    }
    // (Sizing fills a throwaway copy: the same code runs in every mode.)
    std::memcpy(h, meta.slot_mapping.data(), slots_bytes);
    int32_t* hi = reinterpret_cast<int32_t*>(h + slots_bytes);
    std::memcpy(hi, meta.positions.data(), T * sizeof(int32_t));
    for (size_t s = 0; s < S; ++s)
      for (int32_t t = meta.query_start[s]; t < meta.query_start[s + 1]; ++t) hi[T + t] = static_cast<int32_t>(s);
    std::memcpy(hi + 2 * T, meta.block_tables.data(), tables * sizeof(int32_t));
    int32_t* tile = hi + 2 * T + tables;
    int32_t* single = tile + 3 * num_tiles;
    for (size_t s = 0; s < S; ++s) {
      if (meta.query_start[s + 1] - meta.query_start[s] == 1) {
        *single++ = meta.query_start[s];
        continue;
      }
      for (int32_t t = meta.query_start[s]; t < meta.query_start[s + 1]; t += cuda::kPrefillTileTokens) {
        *tile++ = t;
        *tile++ = std::min<int32_t>(cuda::kPrefillTileTokens, meta.query_start[s + 1] - t);
        *tile++ = static_cast<int32_t>(s);
      }
    }
    if (launches()) check(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_), "metadata upload");
    if (mode_ == Mode::Eager) check(cudaEventRecord(staged_copy_done_, stream_), "cudaEventRecord");
    staged_.meta = &meta;
    staged_.slots_host = meta.slot_mapping.data();
    staged_.slots = reinterpret_cast<const int64_t*>(d);
    const int32_t* di = reinterpret_cast<const int32_t*>(d + slots_bytes);
    staged_.positions = di;
    staged_.token_seq = di + T;
    staged_.block_tables = di + 2 * T;
    staged_.tiles = di + 2 * T + tables;
    staged_.num_tiles = static_cast<int64_t>(num_tiles);
    staged_.single_tokens = staged_.tiles + 3 * num_tiles;
    staged_.num_single_tokens = static_cast<int64_t>(num_single);
  }

  bool graphs_supported() const override { return true; }
  bool capture_graph(int64_t key, const std::function<void()>& forward, std::string& why) override {
    use_device();
    try {
      check(cudaStreamSynchronize(stream_), "synchronize before capture");
      if (!graph_pinned_) {
        // The largest graph comes first: one pass without launches grows the graph buffers
        // (nothing may be allocated while capturing) and counts the staging it needs.
        mode_ = Mode::Size;
        forward();
        mode_ = Mode::Eager;
        graph_pinned_bytes_ = graph_upload_bytes_ + (size_t{64} << 10);
        check(cudaMallocHost(&graph_pinned_, graph_pinned_bytes_), "cudaMallocHost (graph staging)");
      }
      mode_ = Mode::Capture;
      graph_cursor_ = 0;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      cudaGraph_t graph = nullptr;
      try {
        forward();
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
      mode_ = Mode::Eager;
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e, "cudaGraphInstantiate");
      if (auto it = graphs_.find(key); it != graphs_.end()) cudaGraphExecDestroy(it->second);
      graphs_[key] = exec;
      return true;
    } catch (const std::exception& e) {
      mode_ = Mode::Eager;
      cudaGetLastError();
      why = e.what();
      return false;
    }
  }

  void replay_graph(int64_t key, const std::function<void()>& forward) override {
    use_device();
    const auto it = graphs_.find(key);
    if (it == graphs_.end()) throw Error("no CUDA graph of size " + std::to_string(key));
    check(cudaEventSynchronize(graph_done_), "previous graph");  // its copies have read the staging
    mode_ = Mode::Replay;
    graph_cursor_ = 0;
    try {
      forward();
    } catch (...) {
      mode_ = Mode::Eager;
      throw;
    }
    mode_ = Mode::Eager;
    check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
    check(cudaEventRecord(graph_done_, stream_), "cudaEventRecord");
  }

 private:
  // The engine is built on one thread and stepped on another; the current device is per
  // thread, so each entry point that starts work makes it this backend's.
  void use_device() { check(cudaSetDevice(ordinal_), "cudaSetDevice"); }
  // The step's keys and values into the cache (attention's first step).
  void write_kv(const Tensor& k, const Tensor& v, int64_t tokens, int64_t ld, const int64_t* slots,
                KVCacheLayer& cache) {
    const int64_t* dev_slots =
        slots == staged_.slots_host ? staged_.slots : upload_array(slots, tokens, region(slots_dev_, graph_slots_dev_));
    if (!launches()) return;
    cuda::invokeWriteKv(k.data, v.data, tokens, ld, dev_slots, cache.k.data, cache.v.data, cache.k.dim(1),
                        cache.k.dim(3), cache.k.dim(2), dtype_id(DType::F32), dtype_id(cache.k.dtype), stream_);
  }

  // Eager: ops launch kernels. Size: they launch nothing, grow the graph buffers and count the
  // staging (before the first capture). Capture: they are recorded into a graph. Replay: they
  // only refresh the host inputs in the graph staging (the graph is launched after).
  enum class Mode { Eager, Size, Capture, Replay };
  // Graphs have device regions of their own, which eager steps never move.
  Buffer& region(Buffer& eager, Buffer& graph) { return mode_ == Mode::Eager ? eager : graph; }
  static size_t staged_size(size_t bytes) { return (bytes + 255) / 256 * 256; }
  // The next slot of the eager upload ring. At its end it starts over once every copy from it
  // has finished (begin_forward starts over past half, when earlier steps' copies are done).
  void* upload_slot(size_t bytes) {
    if (!upload_ring_) check(cudaMallocHost(&upload_ring_, kUploadRingBytes), "cudaMallocHost (upload ring)");
    if (upload_cursor_ + staged_size(bytes) > kUploadRingBytes) {
      check(cudaEventSynchronize(upload_done_), "upload ring");
      upload_cursor_ = 0;
    }
    void* p = static_cast<char*>(upload_ring_) + upload_cursor_;
    upload_cursor_ += staged_size(bytes);
    return p;
  }
  // The next 256-byte aligned slot of the graph staging; the same sequence of uploads finds
  // the same slots at capture and at every replay.
  void* graph_slot(size_t bytes) {
    if (graph_cursor_ + staged_size(bytes) > graph_pinned_bytes_)
      throw Error("CUDA graph staging too small (" + std::to_string(graph_pinned_bytes_) + " bytes)");
    void* p = static_cast<char*>(graph_pinned_) + graph_cursor_;
    graph_cursor_ += staged_size(bytes);
    return p;
  }

  // The scratch (activation copy, bf16 weight tile) is sized from the row count alone, so the
  // graphs' sizing pass reserves what capture and replay use.
  void quant_linear(const CudaQuantLinear& w, const Tensor& x, int64_t ldx, Tensor& y, int64_t ldy, bool accumulate) {
    const int64_t m = x.dim(0);
    if (m == 0) return;
    const cuda::QuantWeightView view = w.view();
    const cuda::QuantLinearPlan plan = cuda::plan_quant_linear(view.layout, m);
    void* xs = scratch(region(x_conv_, graph_x_conv_), plan.x_bytes);
    void* tile = plan.tile_bytes ? scratch(region(weight_tile_, graph_weight_tile_), plan.tile_bytes) : nullptr;
    if (!launches()) return;
    cuda::invokeQuantLinear(gemm_.get(), view, plan, x.as<float>(), ldx, m, y.as<float>(), ldy, accumulate, xs, tile,
                            stream_);
  }

  std::unique_ptr<LinearWeight> finish_linear(const std::vector<char>& host, DType dtype, int64_t n, int64_t k,
                                              const std::vector<float>& bias) {
    Buffer w = allocate(host.size());
    upload(w.data(), host.data(), host.size());
    Buffer b;
    if (!bias.empty()) {
      b = allocate(bias.size() * sizeof(float));
      upload(b.data(), bias.data(), bias.size() * sizeof(float));
    }
    // The host copies go out of scope when this returns: finish the transfers first.
    check(cudaStreamSynchronize(stream_), "weight upload");
    return std::make_unique<CudaLinear>(std::move(w), std::move(b), n, k, dtype);
  }

  // The parts' biases as one f32 array (zeros for parts without one); empty when none has one.
  static std::vector<float> host_bias(const std::vector<Tensor>& parts, const std::vector<Tensor>& biases, int64_t n) {
    std::vector<float> out;
    bool any = false;
    for (const Tensor& b : biases) any = any || b.data != nullptr;
    if (!any) return out;
    out.assign(static_cast<size_t>(n), 0.0f);
    int64_t row = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const int64_t rows = parts[i].dim(0);
      if (i < biases.size() && biases[i].data)
        convert_to_f32(biases[i].data, biases[i].dtype, out.data() + row, static_cast<size_t>(rows));
      row += rows;
    }
    return out;
  }

  // A device region of at least `bytes`, grown (never shrunk) as needed. Growing frees the
  // old one, which cudaFree orders after the work that may still read it.
  void* scratch(Buffer& buf, size_t bytes) {
    if (buf.size() < bytes && (mode_ == Mode::Capture || mode_ == Mode::Replay))
      throw Error("a CUDA graph needs a buffer larger than its sizing pass made");
    if (buf.size() < bytes) {
      buf = Buffer();
      buf = allocate(bytes + bytes / 2);
    }
    return buf.data();
  }
  template <class T>
  const T* upload_array(const T* host, int64_t n, Buffer& region) {
    void* d = scratch(region, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
    upload(d, host, static_cast<size_t>(n) * sizeof(T));
    return static_cast<const T*>(d);
  }
  const int32_t* upload_ids(const int32_t* ids, int64_t n) {
    return upload_array(ids, n, region(ids_dev_, graph_ids_dev_));
  }

  struct Staged {
    const AttentionMetadata* meta = nullptr;
    const int64_t* slots_host = nullptr;
    const int64_t* slots = nullptr;
    const int32_t* positions = nullptr;
    const int32_t* token_seq = nullptr;
    const int32_t* block_tables = nullptr;
    const int32_t* tiles = nullptr;
    int64_t num_tiles = 0;
    const int32_t* single_tokens = nullptr;
    int64_t num_single_tokens = 0;
  };

  int ordinal_;
  bool simple_kernels_ = false;
  bool dequantize_weights_ = false;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t staged_copy_done_ = nullptr;
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
  Buffer x_conv_, ids_dev_, slots_dev_, meta_dev_, sample_dev_, processed_logits_, processing_dev_, attn_split_;
  Buffer moe_rows_dev_, moe_weights_dev_, weight_tile_;
  void* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
  static constexpr size_t kUploadRingBytes = size_t{8} << 20;
  void* upload_ring_ = nullptr;
  size_t upload_cursor_ = 0;
  cudaEvent_t upload_done_ = nullptr;
  Mode mode_ = Mode::Eager;
  Buffer graph_x_conv_, graph_ids_dev_, graph_slots_dev_, graph_meta_dev_, graph_attn_split_, graph_weight_tile_;
  size_t graph_upload_bytes_ = 0;  // staging the sizing pass counted
  void* graph_pinned_ = nullptr;
  size_t graph_pinned_bytes_ = 0, graph_cursor_ = 0;
  std::map<int64_t, cudaGraphExec_t> graphs_;
  cudaEvent_t graph_done_ = nullptr;
  Staged staged_;
};

int device_count(char* error, size_t error_len) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cuda_util::write_error(error, error_len, std::string("no usable NVIDIA GPU (the CUDA runtime says: ") + cudaGetErrorString(e) + ")");
    return 0;
  }
  if (n == 0) cuda_util::write_error(error, error_len, "no CUDA device is visible");
  return n;
}

Communicator* create_communicator(Backend* backend, Communicator* host, const DeviceCommunicatorOptions* options,
                                  bool* timed_out, char* error, size_t error_len) {
  *timed_out = false;
  try {
    auto* device = dynamic_cast<CudaDeviceAccess*>(backend);
    if (!device) throw InvalidArgument("a device communicator needs a backend of the CUDA library");
    return new_cuda_communicator(*device, *host, *options).release();
  } catch (const CommTimeout& e) {
    *timed_out = true;
    cuda_util::write_error(error, error_len, e.what());
  } catch (const std::exception& e) {
    cuda_util::write_error(error, error_len, e.what());
  }
  return nullptr;
}

Backend* create_backend(int ordinal, char* error, size_t error_len) {
  try {
    return new CudaBackend(ordinal);
  } catch (const std::exception& e) {
    cuda_util::write_error(error, error_len, e.what());
    return nullptr;
  }
}

}  // namespace

}  // namespace cserve

extern "C" __attribute__((visibility("default"))) void cserve_cuda_entry_points(cserve::CudaEntryPoints* out) {
  out->abi_version = cserve::kCudaBackendAbi;
  out->device_count = &cserve::device_count;
  out->create_backend = &cserve::create_backend;
  out->create_communicator = &cserve::create_communicator;
}
