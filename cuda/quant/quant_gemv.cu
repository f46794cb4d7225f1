// The decode GEMM on quantized weights: one warp per output column, each lane one block of 32
// values at a time (a 16-byte load of 4-bit codes, two of 8-bit ones; lanes on consecutive
// blocks, so a warp reads 512 or 1024 contiguous bytes), up to 8 activation rows per pass.
// A block's contribution is d * sum(x * u) + m * sum(x): the codes become floats once per
// block and serve every activation row.
#include "common.cuh"
#include "quant/quant_codes.cuh"
#include "quant/quant_kernels.h"

namespace cserve::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxRowsPerPass = 8;

template <int Bits, bool HalfScales, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    quant_gemv_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, int rows, QuantWeightView w,
                      bool accumulate) {
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (col >= w.layout.n) return;  // the whole warp
  const int64_t blocks = w.layout.blocks();
  const uint8_t* codes = w.codes + col * static_cast<int64_t>(w.layout.row_code_bytes());
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;

  for (int64_t b = lane; b < blocks; b += 32) {
    uint32_t words[Bits];  // the block's 32 codes: 4 words of 4-bit codes, 8 of 8-bit ones
    const uint4* src = reinterpret_cast<const uint4*>(codes + b * (kQuantBlock * Bits / 8));
#pragma unroll
    for (int q = 0; q < Bits / 4; ++q) {
      const uint4 v = __ldg(src + q);
      words[4 * q] = v.x;
      words[4 * q + 1] = v.y;
      words[4 * q + 2] = v.z;
      words[4 * q + 3] = v.w;
    }
    const float2 dm = load_scale_pair<HalfScales>(w.scales, col * blocks + b);
    float sum_ux[M], sum_x[M];
#pragma unroll
    for (int i = 0; i < M; ++i) sum_ux[i] = sum_x[i] = 0.0f;
#pragma unroll
    for (int g = 0; g < kQuantBlock / 4; ++g) {
      float u[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) u[t] = code_value<Bits>(words, 4 * g + t);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (i < rows) {
          const float4 xv = __ldg(reinterpret_cast<const float4*>(x + i * ldx + b * kQuantBlock + 4 * g));
          sum_ux[i] += xv.x * u[0] + xv.y * u[1] + xv.z * u[2] + xv.w * u[3];
          sum_x[i] += (xv.x + xv.y) + (xv.z + xv.w);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) acc[i] += dm.x * sum_ux[i] + dm.y * sum_x[i];
  }

#pragma unroll
  for (int i = 0; i < M; ++i) {
    if (i < rows) {
      const float v = warp_sum(acc[i]) + (w.bias ? w.bias[col] : 0.0f);
      if (lane == 0) {
        float* out = y + i * ldy + col;
        *out = accumulate ? *out + v : v;
      }
    }
  }
}

template <int Bits, bool HalfScales>
void launch_gemv_pass(float* y, int64_t ldy, const float* x, int64_t ldx, int rows, const QuantWeightView& w,
                      bool accumulate, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((w.layout.n + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const dim3 block(kWarpsPerBlock * 32);
  if (rows == 1)
    quant_gemv_kernel<Bits, HalfScales, 1><<<grid, block, 0, stream>>>(y, ldy, x, ldx, rows, w, accumulate);
  else if (rows == 2)
    quant_gemv_kernel<Bits, HalfScales, 2><<<grid, block, 0, stream>>>(y, ldy, x, ldx, rows, w, accumulate);
  else if (rows <= 4)
    quant_gemv_kernel<Bits, HalfScales, 4><<<grid, block, 0, stream>>>(y, ldy, x, ldx, rows, w, accumulate);
  else
    quant_gemv_kernel<Bits, HalfScales, 8><<<grid, block, 0, stream>>>(y, ldy, x, ldx, rows, w, accumulate);
}

}  // namespace

void invokeQuantGemv(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t m, const QuantWeightView& w,
                     bool accumulate, cudaStream_t stream) {
  if (m <= 0 || w.layout.n <= 0) return;
  if (ldx % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0)
    throw std::invalid_argument("invokeQuantGemv: x rows must be 16-byte aligned");
  dispatch_quant_layout(w.layout, [&](auto bits, auto half) {
    for (int64_t i0 = 0; i0 < m; i0 += kMaxRowsPerPass) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRowsPerPass, m - i0));
      launch_gemv_pass<decltype(bits)::value, decltype(half)::value>(y + i0 * ldy, ldy, x + i0 * ldx, ldx, rows, w,
                                                                     accumulate, stream);
    }
  });
  check(cudaGetLastError(), "quant_gemv");
}

}  // namespace cserve::cuda
