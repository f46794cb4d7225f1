#include "common.cuh"
#include "elementwise/convert.h"

namespace cserve::cuda {

namespace {

template <class O, class I>
__global__ void convert_rows_kernel(O* dst, int64_t ld_dst, const I* src, int64_t ld_src, int64_t cols) {
  const int64_t r = blockIdx.y;
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    dst[r * ld_dst + c] = from_f32<O>(to_f32(src[r * ld_src + c]));
}

__global__ void add_bias_kernel(float* y, int64_t ldy, const float* bias, int64_t cols) {
  const int64_t r = blockIdx.y;
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    y[r * ldy + c] += bias[c];
}

constexpr int64_t kMaxGridRows = 65535;

dim3 row_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((cols + 255) / 256, 64)), static_cast<unsigned>(rows));
}

}  // namespace

void invokeConvertRows(void* dst, int dst_dtype, int64_t ld_dst, const void* src, int src_dtype, int64_t ld_src,
                       int64_t rows, int64_t cols, cudaStream_t stream) {
  // grid.y holds at most 65535 rows: larger batches go in slices.
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxGridRows) {
    const int64_t n = std::min(kMaxGridRows, rows - r0);
    CSERVE_DISPATCH_DTYPE(dst_dtype, O, CSERVE_DISPATCH_DTYPE(src_dtype, I,
        convert_rows_kernel<O, I><<<row_grid(n, cols), 256, 0, stream>>>(
            static_cast<O*>(dst) + r0 * ld_dst, ld_dst, static_cast<const I*>(src) + r0 * ld_src, ld_src, cols)));
  }
  check(cudaGetLastError(), "convert_rows");
}

void invokeAddBias(float* y, int64_t ldy, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxGridRows) {
    const int64_t n = std::min(kMaxGridRows, rows - r0);
    add_bias_kernel<<<row_grid(n, cols), 256, 0, stream>>>(y + r0 * ldy, ldy, bias, cols);
  }
  check(cudaGetLastError(), "add_bias");
}

namespace {

__global__ void scale_kernel(float* x, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= factor;
}

}  // namespace

void invokeScale(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  scale_kernel<<<blocks, 256, 0, stream>>>(x, n, factor);
  check(cudaGetLastError(), "scale");
}

}  // namespace cserve::cuda
