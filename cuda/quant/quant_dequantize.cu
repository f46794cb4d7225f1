// Dequantizing kernels: weight tiles to bf16 (for cuBLASLt at larger batches), single rows to
// f32 (tied embeddings), and the activation gather that act-order weights need.
#include <cuda_bf16.h>

#include <algorithm>

#include "common.cuh"
#include "quant/quant_codes.cuh"
#include "quant/quant_kernels.h"

namespace cserve::cuda {

namespace {

constexpr int64_t kMaxGridRows = 65535;

// One thread per 8 values: one word of 4-bit codes or two of 8-bit ones in, 16 bytes of bf16 out.
template <int Bits, bool HalfScales>
__global__ void quant_dequantize_rows_kernel(__nv_bfloat16* out, QuantWeightView w, int64_t row0, int64_t rows) {
  const int64_t k = w.layout.k, groups_per_row = k / 8, blocks = w.layout.blocks();
  const int64_t total = rows * groups_per_row;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / groups_per_row, g = t % groups_per_row, row = row0 + r;
    const uint8_t* codes = w.codes + row * static_cast<int64_t>(w.layout.row_code_bytes()) + g * Bits;
    uint32_t words[Bits / 4];
    if constexpr (Bits == 4) {
      words[0] = __ldg(reinterpret_cast<const uint32_t*>(codes));
    } else {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(codes));
      words[0] = v.x;
      words[1] = v.y;
    }
    const float2 dm = load_scale_pair<HalfScales>(w.scales, row * blocks + g / 4);
    __align__(16) __nv_bfloat162 values[4];
#pragma unroll
    for (int p = 0; p < 4; ++p)
      values[p] = __floats2bfloat162_rn(fmaf(dm.x, code_value<Bits>(words, 2 * p), dm.y),
                                        fmaf(dm.x, code_value<Bits>(words, 2 * p + 1), dm.y));
    *reinterpret_cast<uint4*>(out + r * k + g * 8) = *reinterpret_cast<const uint4*>(values);
  }
}

template <int Bits, bool HalfScales>
__global__ void quant_gather_rows_kernel(float* out, QuantWeightView w, const int32_t* ids) {
  const int64_t i = blockIdx.y, k = w.layout.k, row = ids[i];
  const uint8_t* codes = w.codes + row * static_cast<int64_t>(w.layout.row_code_bytes());
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t byte = codes[j * Bits / 8];
    const uint32_t u = Bits == 8 ? byte : (j % 2 ? byte >> 4 : byte & 0xF);
    const float2 dm = load_scale_pair<HalfScales>(w.scales, row * w.layout.blocks() + j / kQuantBlock);
    out[i * k + (w.k_order ? w.k_order[j] : j)] = fmaf(dm.x, static_cast<float>(u), dm.y);
  }
}

template <class O>
__global__ void gather_columns_kernel(O* out, const float* x, int64_t ldx, int64_t k, const int32_t* order) {
  const int64_t i = blockIdx.y;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i * k + j] = from_f32<O>(x[i * ldx + (order ? order[j] : j)]);
}

dim3 row_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>((cols + 255) / 256, 1, 64)), static_cast<unsigned>(rows));
}

}  // namespace

void invokeQuantDequantizeRows(void* out_bf16, const QuantWeightView& w, int64_t row0, int64_t rows,
                               cudaStream_t stream) {
  if (rows <= 0) return;
  const int64_t total = rows * (w.layout.k / 8);
  const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>((total + 255) / 256, 1, 65536));
  dispatch_quant_layout(w.layout, [&](auto bits, auto half) {
    quant_dequantize_rows_kernel<decltype(bits)::value, decltype(half)::value>
        <<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(out_bf16), w, row0, rows);
  });
  check(cudaGetLastError(), "quant_dequantize_rows");
}

void invokeQuantGatherRows(float* out, const QuantWeightView& w, const int32_t* ids, int64_t num_ids,
                           cudaStream_t stream) {
  dispatch_quant_layout(w.layout, [&](auto bits, auto half) {
    for (int64_t i0 = 0; i0 < num_ids; i0 += kMaxGridRows) {
      const int64_t n = std::min(kMaxGridRows, num_ids - i0);
      quant_gather_rows_kernel<decltype(bits)::value, decltype(half)::value>
          <<<row_grid(n, w.layout.k), 256, 0, stream>>>(out + i0 * w.layout.k, w, ids + i0);
    }
  });
  check(cudaGetLastError(), "quant_gather_rows");
}

void invokeGatherColumns(void* out, int out_dtype, const float* x, int64_t ldx, int64_t m, int64_t k,
                         const int32_t* order, cudaStream_t stream) {
  for (int64_t i0 = 0; i0 < m; i0 += kMaxGridRows) {
    const int64_t n = std::min(kMaxGridRows, m - i0);
    CSERVE_DISPATCH_DTYPE(out_dtype, O,
        gather_columns_kernel<O><<<row_grid(n, k), 256, 0, stream>>>(static_cast<O*>(out) + i0 * k, x + i0 * ldx,
                                                                    ldx, k, order));
  }
  check(cudaGetLastError(), "gather_columns");
}

}  // namespace cserve::cuda
