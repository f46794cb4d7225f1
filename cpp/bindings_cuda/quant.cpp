// cserve._cuda's quantized GEMM (cuda/quant): codes u [n][k], block scales d and offsets m
// [n][k / 32] from NumPy, packed into the backend's layout, for tests against NumPy.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrays.h"
#include "quant/quant_kernels.h"
#include "quant/quant_layout.h"
#include "quant/quant_linear.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace cc = cserve::cuda;

namespace {

using cserve::cuda_bindings::Array;
using cserve::cuda_bindings::ArrayIn;
using cserve::cuda_bindings::DeviceBytes;
using cserve::cuda_bindings::ok;
using U8In = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using I32In = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

Array new_array(size_t rows, size_t cols) {
  float* data = new float[rows * cols]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  const size_t shape[2] = {rows, cols};
  return Array(data, 2, shape, owner);
}

// A weight packed on the host with pack_quant_row and copied to the device.
struct DeviceQuantWeight {
  cc::QuantLayout layout;
  std::unique_ptr<DeviceBytes> codes, scales, bias, k_order;

  DeviceQuantWeight(U8In u, ArrayIn d, ArrayIn m, int bits, bool half_scales, std::optional<ArrayIn> b,
                    std::optional<I32In> order) {
    layout.bits = bits;
    layout.half_scales = half_scales;
    layout.n = static_cast<int64_t>(u.shape(0));
    layout.k = static_cast<int64_t>(u.shape(1));
    const int64_t blocks = layout.blocks();
    if (bits != 4 && bits != 8) throw std::invalid_argument("bits must be 4 or 8");
    if (layout.k % cc::kQuantBlock) throw std::invalid_argument("k must be a multiple of 32");
    if (d.size() != static_cast<size_t>(layout.n * blocks) || m.size() != d.size())
      throw std::invalid_argument("d and m must be [n][k / 32]");
    if (b && b->size() != static_cast<size_t>(layout.n)) throw std::invalid_argument("bias must have n values");
    if (order && order->size() != static_cast<size_t>(layout.k)) throw std::invalid_argument("k_order must have k values");
    std::vector<uint8_t> host_codes(layout.code_bytes()), host_scales(layout.scale_bytes());
    const size_t scale_row = static_cast<size_t>(blocks) * layout.scale_pair_bytes();
    for (int64_t r = 0; r < layout.n; ++r)
      cc::pack_quant_row(layout, u.data() + r * layout.k, d.data() + r * blocks, m.data() + r * blocks,
                         host_codes.data() + r * layout.row_code_bytes(), host_scales.data() + r * scale_row);
    codes = std::make_unique<DeviceBytes>(host_codes.size(), host_codes.data());
    scales = std::make_unique<DeviceBytes>(host_scales.size(), host_scales.data());
    if (b) bias = std::make_unique<DeviceBytes>(b->size() * sizeof(float), b->data());
    if (order) k_order = std::make_unique<DeviceBytes>(order->size() * sizeof(int32_t), order->data());
  }
  cc::QuantWeightView view() const {
    cc::QuantWeightView v;
    v.layout = layout;
    v.codes = static_cast<const uint8_t*>(codes->p);
    v.scales = scales->p;
    v.bias = bias ? static_cast<const float*>(bias->p) : nullptr;
    v.k_order = k_order ? static_cast<const int32_t*>(k_order->p) : nullptr;
    return v;
  }
};

Array download(const DeviceBytes& src, size_t rows, size_t cols) {
  ok(cudaDeviceSynchronize(), "kernel");
  Array out = new_array(rows, cols);
  ok(cudaMemcpy(out.data(), src.p, rows * cols * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  return out;
}

}  // namespace

void bind_quant(nb::module_& m) {
  // y = x W^T (+ bias) (+ y0) with W[n][j] = d[n][j / 32] * u[n][j] + m[n][j / 32] multiplying
  // input x[:, k_order[j]] (or x[:, j]). x is placed x_pad elements into rows of k + x_pad (so
  // x_pad = 1 gives unaligned rows); path: "auto", "gemv" or "tiles".
  m.def("quant_linear", [](U8In u, ArrayIn d, ArrayIn mins, ArrayIn x, int bits, bool half_scales,
                           std::optional<ArrayIn> bias, std::optional<I32In> k_order, std::optional<ArrayIn> y0,
                           const std::string& path, int64_t x_pad, const std::string& library) {
    DeviceQuantWeight w(u, d, mins, bits, half_scales, bias, k_order);
    const int64_t n = w.layout.n, k = w.layout.k, rows = static_cast<int64_t>(x.shape(0));
    if (static_cast<int64_t>(x.shape(1)) != k) throw std::invalid_argument("quant_linear: x and u differ in k");
    const int64_t ldx = k + x_pad;
    std::vector<float> padded(static_cast<size_t>(rows * ldx + x_pad), 0.0f);
    for (int64_t i = 0; i < rows; ++i)
      std::copy(x.data() + i * k, x.data() + (i + 1) * k, padded.begin() + x_pad + i * ldx);
    DeviceBytes dx(padded.size() * sizeof(float), padded.data());
    DeviceBytes dy(static_cast<size_t>(rows * n) * sizeof(float), y0 ? y0->data() : nullptr);
    const cc::QuantLinearPlan plan = cc::plan_quant_linear(w.layout, rows, cserve::cuda_bindings::quant_gemm_path(path));
    DeviceBytes xs(plan.x_bytes), tile(plan.tile_bytes);
    std::unique_ptr<cc::CublasLtGemm> gemm = plan.gemv ? nullptr : std::make_unique<cc::CublasLtGemm>(library);
    cc::invokeQuantLinear(gemm.get(), w.view(), plan, static_cast<const float*>(dx.p) + x_pad, ldx, rows,
                          static_cast<float*>(dy.p), n, y0.has_value(), xs.p, tile.p, nullptr);
    return download(dy, static_cast<size_t>(rows), static_cast<size_t>(n));
  }, "u"_a, "d"_a, "m"_a, "x"_a, "bits"_a, "half_scales"_a, "bias"_a.none() = nb::none(),
     "k_order"_a.none() = nb::none(), "y0"_a.none() = nb::none(), "path"_a = "auto", "x_pad"_a = 0,
     "library"_a = "");

  // Rows `ids` of W dequantized to f32, in the natural column order (tied embeddings).
  m.def("quant_gather_rows", [](U8In u, ArrayIn d, ArrayIn mins, int bits, bool half_scales,
                                std::optional<I32In> k_order, const std::vector<int32_t>& ids) {
    DeviceQuantWeight w(u, d, mins, bits, half_scales, std::nullopt, k_order);
    DeviceBytes dids(ids.size() * sizeof(int32_t), ids.data());
    DeviceBytes out(ids.size() * static_cast<size_t>(w.layout.k) * sizeof(float));
    cc::invokeQuantGatherRows(static_cast<float*>(out.p), w.view(), static_cast<const int32_t*>(dids.p),
                              static_cast<int64_t>(ids.size()), nullptr);
    return download(out, ids.size(), static_cast<size_t>(w.layout.k));
  }, "u"_a, "d"_a, "m"_a, "bits"_a, "half_scales"_a, "k_order"_a.none() = nb::none(), "ids"_a);

  m.def("quant_gemv_max_rows", [] { return cc::kQuantGemvMaxRows; });
}
