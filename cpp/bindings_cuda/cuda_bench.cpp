// Kernel-level timings for benchmarks/gpu_kernels.py: device-resident inputs, CUDA events,
// the median of `iters` runs after `warmup`. Achieved bandwidth and FLOP rates are computed
// from these in Python, against the copy bandwidth measured the same way.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrays.h"
#include "attention/kv_cache.h"
#include "attention/paged_attention.h"
#include "core/dtype.h"
#include "gemm/cublaslt_gemm.h"
#include "quant/quant_linear.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace cc = cserve::cuda;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

using Device = cserve::cuda_bindings::DeviceBytes;

// Median milliseconds of fn() over iters runs on the default stream.
double time_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(a, nullptr), "record");
    fn();
    check(cudaEventRecord(b, nullptr), "record");
    check(cudaEventSynchronize(b), "synchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

void bind_cuda_bench(nb::module_& m) {
  m.def("bench_copy", [](size_t bytes, int iters) {
    Device src(bytes), dst(bytes);
    return time_ms([&] { check(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, nullptr), "copy"); },
                   3, iters);
  }, "bytes"_a, "iters"_a = 20, "Milliseconds of one device-to-device copy of `bytes`.");

  m.def("bench_gemm", [](int64_t m_rows, int64_t n, int64_t k, const std::string& dtype, const std::string& out_dtype,
                         int iters, const std::string& library) {
    const cserve::DType in = cserve::parse_dtype(dtype), out = cserve::parse_dtype(out_dtype);
    // Several weight copies, cycled, so the weights never sit in L2 between runs.
    const size_t wbytes = static_cast<size_t>(n * k) * cserve::dtype_size(in);
    const int copies = static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / std::max<size_t>(wbytes, 1) + 1, 1, 8));
    std::vector<std::unique_ptr<Device>> ws;
    for (int i = 0; i < copies; ++i) ws.push_back(std::make_unique<Device>(wbytes));
    Device x(static_cast<size_t>(m_rows * k) * cserve::dtype_size(in));
    Device y(static_cast<size_t>(m_rows * n) * cserve::dtype_size(out));
    cc::CublasLtGemm gemm(library);
    int turn = 0;
    return time_ms([&] {
      gemm.run(y.p, n, x.p, k, ws[turn++ % copies]->p, m_rows, n, k, static_cast<int>(in), false, nullptr,
               static_cast<int>(out));
    }, 3, iters);
  }, "m"_a, "n"_a, "k"_a, "dtype"_a = "bfloat16", "out_dtype"_a = "float32", "iters"_a = 20, "library"_a = "",
     "Milliseconds of y[m][n] = x[m][k] w[n][k]^T through cuBLASLt.");

  m.def("bench_quant_gemm", [](int64_t m_rows, int64_t n, int64_t k, int bits, bool half_scales,
                               const std::string& path, int iters, const std::string& library) {
    cc::QuantLayout layout;
    layout.bits = bits;
    layout.half_scales = half_scales;
    layout.n = n;
    layout.k = k;
    // Random codes and zero scales (the time does not depend on the values), in several copies,
    // cycled, so the weights never sit in L2 between runs.
    std::vector<uint8_t> codes(layout.code_bytes());
    uint32_t state = 12345;
    for (uint8_t& c : codes) c = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
    const size_t wbytes = layout.code_bytes() + layout.scale_bytes();
    const int copies = static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / wbytes + 1, 1, 8));
    std::vector<std::unique_ptr<Device>> dcodes, dscales;
    for (int i = 0; i < copies; ++i) {
      dcodes.push_back(std::make_unique<Device>(codes.size(), codes.data()));
      dscales.push_back(std::make_unique<Device>(layout.scale_bytes()));
    }
    const cc::QuantLinearPlan plan = cc::plan_quant_linear(layout, m_rows, cserve::cuda_bindings::quant_gemm_path(path));
    Device x(static_cast<size_t>(m_rows * k) * 4), y(static_cast<size_t>(m_rows * n) * 4), xs(plan.x_bytes),
        tile(plan.tile_bytes);
    std::unique_ptr<cc::CublasLtGemm> gemm = plan.gemv ? nullptr : std::make_unique<cc::CublasLtGemm>(library);
    int turn = 0;
    return time_ms([&] {
      cc::QuantWeightView w;
      w.layout = layout;
      w.codes = static_cast<const uint8_t*>(dcodes[turn % copies]->p);
      w.scales = dscales[turn++ % copies]->p;
      cc::invokeQuantLinear(gemm.get(), w, plan, static_cast<const float*>(x.p), k, m_rows, static_cast<float*>(y.p), n,
                            false, xs.p, tile.p, nullptr);
    }, 3, iters);
  }, "m"_a, "n"_a, "k"_a, "bits"_a = 4, "half_scales"_a = true, "path"_a = "auto", "iters"_a = 20, "library"_a = "",
     "Milliseconds of y[m][n] = x[m][k] W^T for a quantized W (cuda/quant): f32 x and y.");

  m.def("bench_decode_attention", [](int64_t num_seqs, int64_t context, int64_t num_heads, int64_t num_kv_heads,
                                     int64_t head_dim, const std::string& kv_dtype, int iters) {
    const int64_t bs = 16, blocks_per_seq = (context + bs - 1) / bs, num_blocks = num_seqs * blocks_per_seq;
    const cserve::DType cdt = cserve::parse_kv_cache_dtype(kv_dtype);
    const size_t cache_bytes = static_cast<size_t>(num_blocks * num_kv_heads * bs * head_dim) * cserve::dtype_size(cdt);
    Device kc(cache_bytes), vc(cache_bytes), q(static_cast<size_t>(num_seqs * num_heads * head_dim) * 4),
        out(static_cast<size_t>(num_seqs * num_heads * head_dim) * 4);
    std::vector<int32_t> table(static_cast<size_t>(num_blocks)), seq(static_cast<size_t>(num_seqs)),
        pos(static_cast<size_t>(num_seqs), static_cast<int32_t>(context - 1));
    for (int64_t i = 0; i < num_blocks; ++i) table[i] = static_cast<int32_t>(i);
    for (int64_t i = 0; i < num_seqs; ++i) seq[i] = static_cast<int32_t>(i);
    Device dt(table.size() * 4), ds(seq.size() * 4), dp(pos.size() * 4);
    check(cudaMemcpy(dt.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice), "H2D");
    check(cudaMemcpy(ds.p, seq.data(), seq.size() * 4, cudaMemcpyHostToDevice), "H2D");
    check(cudaMemcpy(dp.p, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice), "H2D");
    cc::PagedAttentionArgs a;
    a.out = out.p;
    a.q = q.p;
    a.ldq = num_heads * head_dim;
    a.num_tokens = num_seqs;
    a.num_heads = num_heads;
    a.num_kv_heads = num_kv_heads;
    a.head_dim = head_dim;
    a.k_cache = kc.p;
    a.v_cache = vc.p;
    a.block_size = bs;
    a.block_tables = static_cast<const int32_t*>(dt.p);
    a.max_blocks_per_seq = blocks_per_seq;
    a.token_seq = static_cast<const int32_t*>(ds.p);
    a.positions = static_cast<const int32_t*>(dp.p);
    a.scale = 0.08838834764831845f;
    a.act_dtype = static_cast<int>(cserve::DType::F32);
    a.cache_dtype = static_cast<int>(cdt);
    return time_ms([&] { cc::invokePagedAttention(a, nullptr); }, 3, iters);
  }, "num_seqs"_a, "context"_a, "num_heads"_a, "num_kv_heads"_a, "head_dim"_a, "kv_dtype"_a = "bfloat16",
     "iters"_a = 20, "Milliseconds of one decode attention step: num_seqs sequences of `context` cached tokens.");
}
