// cserve._cuda: the CUDA kernels (cuda/), exposed to pytest with NumPy in and out. Built
// only where nvcc is found; imported only by the GPU tests, so `import cserve` never
// needs CUDA. Inputs are f32 arrays, converted to the kernel's dtype on the host.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "activation/silu_mul.h"
#include "arrays.h"
#include "attention/kv_cache.h"
#include "attention/paged_attention.h"
#include "core/dtype.h"
#include "embedding/embedding.h"
#include "gemm/cublaslt_gemm.h"
#include "norm/rms_norm.h"
#include "rope/rope.h"
#include "sampling/sampler.h"

namespace nb = nanobind;
void bind_cuda_bench(nb::module_& m);  // cuda_bench.cpp
void bind_custom_all_reduce(nb::module_& m);  // custom_all_reduce.cpp
void bind_nccl(nb::module_& m);  // nccl.cpp
void bind_quant(nb::module_& m);  // quant.cpp
using namespace nb::literals;
namespace cc = cserve::cuda;

namespace {

using cserve::cuda_bindings::Array;
using cserve::cuda_bindings::ArrayIn;
using cserve::cuda_bindings::ok;

// Device memory for `count` elements of `dtype`, optionally filled from f32 host values.
class DeviceArray {
 public:
  DeviceArray(size_t count, cserve::DType dtype) : count_(count), dtype_(dtype) {
    ok(cudaMalloc(&ptr_, std::max<size_t>(1, count * cserve::dtype_size(dtype))), "cudaMalloc");
  }
  DeviceArray(const float* host, size_t count, cserve::DType dtype) : DeviceArray(count, dtype) {
    std::vector<char> staged(count * cserve::dtype_size(dtype));
    cserve::convert_from_f32(host, staged.data(), dtype, count);
    ok(cudaMemcpy(ptr_, staged.data(), staged.size(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  template <class T>
  static DeviceArray raw(const std::vector<T>& host) {
    DeviceArray d(host.size() * sizeof(T), cserve::DType::F32);
    d.count_ = host.size();
    ok(cudaMemcpy(d.ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    return d;
  }
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), count_(o.count_), dtype_(o.dtype_) { o.ptr_ = nullptr; }
  DeviceArray(const DeviceArray&) = delete;
  ~DeviceArray() { if (ptr_) cudaFree(ptr_); }
  void* get() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  void to_host(float* out) const {
    ok(cudaDeviceSynchronize(), "kernel");
    std::vector<char> staged(count_ * cserve::dtype_size(dtype_));
    ok(cudaMemcpy(staged.data(), ptr_, staged.size(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    cserve::convert_to_f32(staged.data(), dtype_, out, count_);
  }

 private:
  void* ptr_ = nullptr;
  size_t count_ = 0;
  cserve::DType dtype_;
};

Array make_array(std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t d : shape) n *= d;
  float* data = new float[n]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return Array(data, shape.size(), shape.data(), owner);
}

int id_of(cserve::DType t) { return static_cast<int>(t); }  // cserve::DType values are the kernel ids
cserve::DType dtype_of(const std::string& name) { return cserve::parse_dtype(name); }

}  // namespace

NB_MODULE(_cuda, m) {
  m.doc() = "cserve's CUDA kernels, for tests and kernel benchmarks";
  bind_cuda_bench(m);
  bind_custom_all_reduce(m);
  bind_nccl(m);
  bind_quant(m);
  m.def("device_count", [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });
  // (free, total) bytes of the current device, as cudaMemGetInfo reports them.
  m.def("memory_info", [] {
    size_t free_bytes = 0, total_bytes = 0;
    ok(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    return nb::make_tuple(free_bytes, total_bytes);
  });

  m.def("rms_norm", [](ArrayIn x, ArrayIn w, float eps, const std::string& dtype, std::optional<ArrayIn> residual) {
    const size_t rows = x.shape(0), dim = x.shape(1);
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dx(x.data(), rows * dim, dt), dout(rows * dim, dt), dw(w.data(), dim, cserve::DType::F32);
    std::optional<DeviceArray> dres;
    if (residual) dres.emplace(residual->data(), rows * dim, dt);
    cc::invokeRmsNorm(dout.get(), dx.get(), dres ? dres->get() : nullptr, dw.as<float>(), rows, dim, dim, eps,
                      id_of(dt), nullptr);
    Array out = make_array({rows, dim}), res = make_array({rows, dim});
    dout.to_host(out.data());
    if (dres) dres->to_host(res.data());
    return nb::make_tuple(out, res);
  }, "x"_a, "w"_a, "eps"_a, "dtype"_a = "float32", "residual"_a.none() = nb::none());

  // Per-head norms in place over x [tokens][ld]: the first heads * dim values of each row are
  // `heads` rows of `dim` (the backend's q/k norms).
  m.def("rms_norm_heads", [](ArrayIn x, ArrayIn w, int64_t heads, float eps, const std::string& dtype) {
    const size_t tokens = x.shape(0), ld = x.shape(1), dim = w.shape(0);
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dx(x.data(), tokens * ld, dt), dw(w.data(), dim, cserve::DType::F32);
    cc::invokeRmsNormHeads(dx.get(), dx.get(), nullptr, dw.as<float>(), tokens, heads, dim, ld, eps, id_of(dt), nullptr);
    Array out = make_array({tokens, ld});
    dx.to_host(out.data());
    return out;
  }, "x"_a, "w"_a, "heads"_a, "eps"_a, "dtype"_a = "float32");

  m.def("silu_mul", [](ArrayIn gu, const std::string& dtype) {
    const size_t tokens = gu.shape(0), inter = gu.shape(1) / 2;
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dgu(gu.data(), tokens * 2 * inter, dt), dout(tokens * inter, dt);
    cc::invokeSiluMul(dout.get(), dgu.get(), tokens, inter, id_of(dt), nullptr);
    Array out = make_array({tokens, inter});
    dout.to_host(out.data());
    return out;
  }, "gate_up"_a, "dtype"_a = "float32");

  m.def("rope", [](ArrayIn x, ArrayIn cos, ArrayIn sin, int64_t rotary_dim, const std::string& dtype) {
    const size_t tokens = x.shape(0), heads = x.shape(1), d = x.shape(2);
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dx(x.data(), tokens * heads * d, dt);
    DeviceArray dc(cos.data(), cos.size(), cserve::DType::F32), ds(sin.data(), sin.size(), cserve::DType::F32);
    cc::invokeRope(dx.get(), tokens, heads, d, heads * d, dc.as<float>(), ds.as<float>(), rotary_dim, id_of(dt),
                   nullptr);
    Array out = make_array({tokens, heads, d});
    dx.to_host(out.data());
    return out;
  }, "x"_a, "cos"_a, "sin"_a, "rotary_dim"_a, "dtype"_a = "float32");

  m.def("embedding", [](ArrayIn table, const std::vector<int32_t>& ids, const std::string& dtype) {
    const size_t dim = table.shape(1);
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dt_table(table.data(), table.size(), dt), dout(ids.size() * dim, cserve::DType::F32);
    DeviceArray dids = DeviceArray::raw(ids);
    cc::invokeEmbedding(dout.get(), dt_table.get(), dids.as<int32_t>(), ids.size(), dim, id_of(cserve::DType::F32),
                        id_of(dt), nullptr);
    Array out = make_array({ids.size(), dim});
    dout.to_host(out.data());
    return out;
  }, "table"_a, "ids"_a, "dtype"_a = "float32");

  // y = x w^T (+ y0) through cuBLASLt, in `dtype`; library: a libcublasLt path or "" (see
  // cublaslt_gemm.h). Returns (y, the library that was loaded).
  m.def("gemm", [](ArrayIn w, ArrayIn x, const std::string& dtype, std::optional<ArrayIn> y0,
                   const std::string& library) {
    const int64_t n = w.shape(0), k = w.shape(1), rows = x.shape(0);
    if (static_cast<int64_t>(x.shape(1)) != k) throw std::invalid_argument("gemm: x and w differ in k");
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dw(w.data(), w.size(), dt), dx(x.data(), x.size(), dt);
    DeviceArray dy = y0 ? DeviceArray(y0->data(), y0->size(), dt) : DeviceArray(static_cast<size_t>(rows * n), dt);
    cc::CublasLtGemm gemm(library);
    gemm.run(dy.get(), n, dx.get(), k, dw.get(), rows, n, k, id_of(dt), y0.has_value(), nullptr);
    Array out = make_array({static_cast<size_t>(rows), static_cast<size_t>(n)});
    dy.to_host(out.data());
    return nb::make_tuple(out, gemm.library());
  }, "w"_a, "x"_a, "dtype"_a = "bfloat16", "y0"_a.none() = nb::none(), "library"_a = "");

  // x and w rounded to `dtype`, the product accumulated into an f32 y (the backend's linear).
  m.def("gemm_mixed", [](ArrayIn w, ArrayIn x, const std::string& dtype, const std::string& library) {
    const int64_t n = w.shape(0), k = w.shape(1), rows = x.shape(0);
    if (static_cast<int64_t>(x.shape(1)) != k) throw std::invalid_argument("gemm: x and w differ in k");
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dw(w.data(), w.size(), dt), dx(x.data(), x.size(), dt);
    DeviceArray dy(static_cast<size_t>(rows * n), cserve::DType::F32);
    cc::CublasLtGemm gemm(library);
    gemm.run(dy.get(), n, dx.get(), k, dw.get(), rows, n, k, id_of(dt), false, nullptr, id_of(cserve::DType::F32));
    Array out = make_array({static_cast<size_t>(rows), static_cast<size_t>(n)});
    dy.to_host(out.data());
    return out;
  }, "w"_a, "x"_a, "dtype"_a = "bfloat16", "library"_a = "");

  // One GEMM object over the first m rows of x for each m in row_counts (as a server's steps
  // of every length): each product, and how many plans it cached.
  m.def("gemm_row_counts", [](ArrayIn w, ArrayIn x, const std::vector<int64_t>& row_counts, const std::string& dtype,
                              const std::string& library) {
    const int64_t n = w.shape(0), k = w.shape(1), rows = x.shape(0);
    const cserve::DType dt = dtype_of(dtype);
    DeviceArray dw(w.data(), w.size(), dt), dx(x.data(), x.size(), dt);
    DeviceArray dy(static_cast<size_t>(rows * n), cserve::DType::F32);
    cc::CublasLtGemm gemm(library);
    std::vector<Array> outs;
    for (int64_t m_rows : row_counts) {
      if (m_rows < 1 || m_rows > rows) throw std::invalid_argument("gemm_row_counts: a row count outside x");
      gemm.run(dy.get(), n, dx.get(), k, dw.get(), m_rows, n, k, id_of(dt), false, nullptr, id_of(cserve::DType::F32));
      Array out = make_array({static_cast<size_t>(m_rows), static_cast<size_t>(n)});
      ok(cudaMemcpy(out.data(), dy.get(), static_cast<size_t>(m_rows * n) * sizeof(float), cudaMemcpyDeviceToHost), "D2H");
      outs.push_back(std::move(out));
    }
    return nb::make_tuple(outs, gemm.plan_count());
  }, "w"_a, "x"_a, "row_counts"_a, "dtype"_a = "bfloat16", "library"_a = "");
  m.def("gemm_row_bucket", &cc::gemm_row_bucket, "m"_a);

  // One sampled token per row of logits [rows][vocab]; params per row: (temperature, top_k,
  // top_p, min_p, seed, offset). Returns (ids, logprobs, top ids [rows][num_top], top logprobs).
  m.def("sample", [](ArrayIn logits, const std::vector<std::tuple<float, int, float, float, uint64_t, uint64_t>>& params,
                     int num_top) {
    const int64_t rows = logits.shape(0), vocab = logits.shape(1);
    if (static_cast<int64_t>(params.size()) != rows) throw std::invalid_argument("sample: one params tuple per row");
    std::vector<cc::SamplingRow> host;
    for (const auto& [t, k, p, mp, seed, offset] : params) host.push_back({t, k, p, mp, seed, offset});
    DeviceArray dl(logits.data(), logits.size(), cserve::DType::F32);
    DeviceArray dp = DeviceArray::raw(host);
    DeviceArray ids(static_cast<size_t>(rows), cserve::DType::F32), lps(static_cast<size_t>(rows), cserve::DType::F32),
        ranks(static_cast<size_t>(rows), cserve::DType::F32);
    const size_t tops = static_cast<size_t>(rows * std::max(num_top, 1));
    DeviceArray tid(tops, cserve::DType::F32), tlp(tops, cserve::DType::F32);
    cc::invokeSample(dl.as<float>(), nullptr, rows, vocab, dp.as<cc::SamplingRow>(), ids.as<int32_t>(), lps.as<float>(),
                     ranks.as<int32_t>(), num_top, tid.as<int32_t>(), tlp.as<float>(), nullptr);
    ok(cudaDeviceSynchronize(), "sample");
    std::vector<int32_t> out_ids(rows), out_top(tops), out_ranks(rows);
    ok(cudaMemcpy(out_ids.data(), ids.get(), rows * sizeof(int32_t), cudaMemcpyDeviceToHost), "D2H");
    ok(cudaMemcpy(out_ranks.data(), ranks.get(), rows * sizeof(int32_t), cudaMemcpyDeviceToHost), "D2H");
    ok(cudaMemcpy(out_top.data(), tid.get(), tops * sizeof(int32_t), cudaMemcpyDeviceToHost), "D2H");
    Array out_lp = make_array({static_cast<size_t>(rows)});
    lps.to_host(out_lp.data());
    Array out_tlp = make_array({static_cast<size_t>(rows), static_cast<size_t>(num_top)});
    if (num_top > 0) tlp.to_host(out_tlp.data());
    out_top.resize(static_cast<size_t>(rows * num_top));
    return nb::make_tuple(out_ids, out_lp, out_top, out_tlp, out_ranks);
  }, "logits"_a, "params"_a, "num_top"_a = 0);

  // Logits processors and penalties in place on logits [rows][vocab]; rows: (allowed ids, bias
  // pairs, masked ids, seen ids, (id, count) pairs, repetition, frequency, presence).
  m.def("process_logits", [](ArrayIn logits,
                             const std::vector<std::tuple<std::vector<int32_t>, std::vector<std::pair<int32_t, float>>,
                                                          std::vector<int32_t>, std::vector<int32_t>,
                                                          std::vector<std::pair<int32_t, float>>, float, float, float>>& rows) {
    const int64_t n = logits.shape(0), vocab = logits.shape(1);
    if (static_cast<int64_t>(rows.size()) != n) throw std::invalid_argument("process_logits: one row spec per row");
    std::vector<cc::ProcessorRow> params;
    std::vector<int32_t> ids;
    std::vector<float> values;
    auto add = [&](const std::vector<int32_t>& list, int32_t& begin, int32_t& end) {
      begin = static_cast<int32_t>(ids.size());
      for (int32_t t : list) ids.push_back(t), values.push_back(0.0f);
      end = static_cast<int32_t>(ids.size());
    };
    auto add_pairs = [&](const std::vector<std::pair<int32_t, float>>& list, int32_t& begin, int32_t& end) {
      begin = static_cast<int32_t>(ids.size());
      for (const auto& [t, v] : list) ids.push_back(t), values.push_back(v);
      end = static_cast<int32_t>(ids.size());
    };
    for (const auto& [allowed, bias, masked, seen, counts, rp, fp, pp] : rows) {
      cc::ProcessorRow r;
      add(allowed, r.allowed_begin, r.allowed_end);
      add_pairs(bias, r.bias_begin, r.bias_end);
      add(masked, r.masked_begin, r.masked_end);
      add(seen, r.seen_begin, r.seen_end);
      add_pairs(counts, r.counts_begin, r.counts_end);
      r.repetition_penalty = rp;
      r.frequency_penalty = fp;
      r.presence_penalty = pp;
      params.push_back(r);
    }
    DeviceArray dl(logits.data(), logits.size(), cserve::DType::F32);
    DeviceArray dp = DeviceArray::raw(params), di = DeviceArray::raw(ids), dv = DeviceArray::raw(values);
    cc::invokeProcessLogits(dl.as<float>(), n, vocab, dp.as<cc::ProcessorRow>(), di.as<int32_t>(), dv.as<float>(), nullptr);
    Array out = make_array({static_cast<size_t>(n), static_cast<size_t>(vocab)});
    dl.to_host(out.data());
    return out;
  }, "logits"_a, "rows"_a);

  // The CPU testing API's paged_attention: one sequence whose K/V ([len][kv_heads][d]) are
  // written through write_kv into the listed blocks, then its last q.shape(0) tokens attend.
  m.def("paged_attention", [](ArrayIn q, ArrayIn k, ArrayIn v, int block_size, const std::vector<int32_t>& block_ids,
                              const std::string& kv_dtype, float scale, int64_t sliding_window,
                              const std::string& act_dtype, const std::vector<int32_t>& single_tokens) {
    const int64_t nq = q.shape(0), nh = q.shape(1), d = q.shape(2);
    const int64_t len = k.shape(0), nkv = k.shape(1);
    int64_t num_blocks = 0;
    for (int32_t b : block_ids) num_blocks = std::max<int64_t>(num_blocks, b + 1);
    const cserve::DType cdt = cserve::parse_kv_cache_dtype(kv_dtype), adt = dtype_of(act_dtype);
    const size_t cache_elems = static_cast<size_t>(num_blocks * nkv * block_size * d);
    DeviceArray kc(cache_elems, cdt), vc(cache_elems, cdt);
    DeviceArray dk(k.data(), k.size(), adt), dv(v.data(), v.size(), adt), dq(q.data(), q.size(), adt);
    std::vector<int64_t> slots;
    for (int64_t p = 0; p < len; ++p) slots.push_back(int64_t{block_ids[p / block_size]} * block_size + p % block_size);
    DeviceArray dslots = DeviceArray::raw(slots);
    cc::invokeWriteKv(dk.get(), dv.get(), len, nkv * d, dslots.as<int64_t>(), kc.get(), vc.get(), nkv, d, block_size,
                      id_of(adt), id_of(cdt), nullptr);
    std::vector<int32_t> positions, token_seq(nq, 0);
    for (int64_t j = 0; j < nq; ++j) positions.push_back(static_cast<int32_t>(len - nq + j));
    DeviceArray dpos = DeviceArray::raw(positions), dseq = DeviceArray::raw(token_seq),
                dtable = DeviceArray::raw(block_ids);
    DeviceArray dout(nq * nh * d, adt);
    cc::PagedAttentionArgs a;
    a.out = dout.get();
    a.q = dq.get();
    a.ldq = nh * d;
    a.num_tokens = nq;
    a.num_heads = nh;
    a.num_kv_heads = nkv;
    a.head_dim = d;
    a.k_cache = kc.get();
    a.v_cache = vc.get();
    a.block_size = block_size;
    a.block_tables = dtable.as<int32_t>();
    a.max_blocks_per_seq = static_cast<int64_t>(block_ids.size());
    a.token_seq = dseq.as<int32_t>();
    a.positions = dpos.as<int32_t>();
    a.scale = scale;
    a.sliding_window = sliding_window;
    a.act_dtype = id_of(adt);
    a.cache_dtype = id_of(cdt);
    a.max_context = len;  // long contexts over few (token, head) blocks are split
    // Several queries: the tiled prefill kernel over runs of the queries not in single_tokens,
    // which the per-token kernel takes (as a mixed batch's decode tokens).
    std::vector<char> single(static_cast<size_t>(nq), 0);
    for (int32_t t : single_tokens) {
      if (t < 0 || t >= nq) throw std::invalid_argument("paged_attention: a single token outside q");
      single[t] = 1;
    }
    std::vector<int32_t> tiles;
    for (int64_t t = 0; nq > 1 && t < nq;) {
      if (single[t]) {
        ++t;
        continue;
      }
      int64_t n = 0;
      while (t + n < nq && n < cc::kPrefillTileTokens && !single[t + n]) ++n;
      tiles.insert(tiles.end(), {static_cast<int32_t>(t), static_cast<int32_t>(n), 0});
      t += n;
    }
    DeviceArray dtiles = DeviceArray::raw(tiles.empty() ? std::vector<int32_t>{0} : tiles);
    DeviceArray dsingle = DeviceArray::raw(single_tokens.empty() ? std::vector<int32_t>{0} : single_tokens);
    if (!tiles.empty()) {
      a.tiles = dtiles.as<int32_t>();
      a.num_tiles = static_cast<int64_t>(tiles.size() / 3);
      a.single_tokens = dsingle.as<int32_t>();
      a.num_single_tokens = static_cast<int64_t>(single_tokens.size());
    }
    const int64_t ws = cc::paged_attention_workspace(a);
    DeviceArray workspace(static_cast<size_t>(std::max<int64_t>(ws, 1)), cserve::DType::F32);
    if (ws > 0) a.workspace = workspace.as<float>();
    cc::invokePagedAttention(a, nullptr);
    Array out = make_array({static_cast<size_t>(nq), static_cast<size_t>(nh * d)});
    dout.to_host(out.data());
    return out;
  }, "q"_a, "k"_a, "v"_a, "block_size"_a, "block_ids"_a, "kv_dtype"_a, "scale"_a, "sliding_window"_a,
     "act_dtype"_a = "float32", "single_tokens"_a = std::vector<int32_t>{});
}
