// Dense GEMMs through cuBLASLt: y[m][n] (= or +=) x[m][k] w[n][k]^T, bf16 / f16 / f32 in and
// out, f32 accumulation. cuBLASLt is loaded at run time (dlopen), so building cserve needs no
// cuBLAS headers or libraries: they come with the CUDA toolkit or NVIDIA's PyPI wheels
// (nvidia-cublas), found through CSERVE_CUBLASLT, the loader path, or the path given here.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

namespace cserve::cuda {

// The row count whose heuristic answer serves m rows: m itself up to 64, then four buckets per
// doubling (65..80 -> 80, ..., 129..160 -> 160).
int64_t gemm_row_bucket(int64_t m);

class CublasLtGemm {
 public:
  // `library`: a path to libcublasLt.so.*; empty: $CSERVE_CUBLASLT, else libcublasLt.so.13 and
  // libcublasLt.so.12 on the loader path. Throws std::runtime_error naming what it tried.
  explicit CublasLtGemm(const std::string& library = "");
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Row-major x [m][k] (row stride ldx), w [n][k], y [m][n] (row stride ldy), all `dtype`
  // (DTypeId), except y when out_dtype >= 0 (bf16/f16 x and w into an f32 y is how the CUDA
  // backend keeps f32 activations). accumulate: y += x w^T. Plans (layouts, algorithm) are
  // cached per shape, with row counts in buckets (gemm_row_bucket), so that prefill lengths
  // never make more than a few dozen per (n, k).
  void run(void* y, int64_t ldy, const void* x, int64_t ldx, const void* w, int64_t m, int64_t n, int64_t k,
           int dtype, bool accumulate, cudaStream_t stream, int out_dtype = -1);

  const std::string& library() const;
  size_t plan_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cserve::cuda
