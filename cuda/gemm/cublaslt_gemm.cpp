#include "gemm/cublaslt_gemm.h"

#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace cserve::cuda {

namespace {

// The part of cublasLt.h this file uses (values from CUDA 13's headers; stable since CUDA 11).
using Status = int;
using Handle = void*;
using MatmulDesc = void*;
using Layout = void*;
using Preference = void*;
struct Algo {
  uint64_t data[8];
};
struct HeuristicResult {
  Algo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};
constexpr int kComputeF32 = 68;                  // CUBLAS_COMPUTE_32F
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;  // cudaDataType
constexpr int kDescTransA = 3, kDescTransB = 4;  // cublasLtMatmulDescAttributes_t
constexpr int kPrefMaxWorkspace = 1;             // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kLayoutCols = 3;                   // CUBLASLT_MATRIX_LAYOUT_COLS (uint64_t)
constexpr int kOpN = 0, kOpT = 1;                // cublasOperation_t
constexpr size_t kWorkspaceBytes = 32u << 20;

struct Api {
  Status (*create)(Handle*);
  Status (*destroy)(Handle);
  Status (*desc_create)(MatmulDesc*, int, int);
  Status (*desc_destroy)(MatmulDesc);
  Status (*desc_set)(MatmulDesc, int, const void*, size_t);
  Status (*layout_create)(Layout*, int, uint64_t, uint64_t, int64_t);
  Status (*layout_destroy)(Layout);
  Status (*layout_set)(Layout, int, const void*, size_t);
  Status (*pref_create)(Preference*);
  Status (*pref_destroy)(Preference);
  Status (*pref_set)(Preference, int, const void*, size_t);
  Status (*heuristic)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Preference, int, HeuristicResult*, int*);
  Status (*matmul)(Handle, MatmulDesc, const void*, const void*, Layout, const void*, Layout, const void*,
                   const void*, Layout, void*, Layout, const Algo*, void*, size_t, cudaStream_t);
};

void ok(Status s, const char* what) {
  if (s != 0) throw std::runtime_error(std::string("cuBLASLt ") + what + " failed (status " + std::to_string(s) + ")");
}

int data_type(int dtype) {
  switch (dtype) {
    case 0: return kR32F;
    case 1: return kR16F;
    case 2: return kR16BF;
    default: throw std::invalid_argument("gemm: unsupported dtype id " + std::to_string(dtype));
  }
}

// One plan serves a bucket of row counts: its algorithm is the heuristic's for the bucket's
// largest, and its x and y layouts are set to each call's rows.
struct Plan {
  MatmulDesc desc = nullptr;
  Layout a = nullptr, b = nullptr, c = nullptr;
  int64_t rows = 0;  // what b and c describe now
  Algo algo{};
};

}  // namespace

struct CublasLtGemm::Impl {
  void* lib = nullptr;
  std::string path;
  Api api{};
  Handle handle = nullptr;
  void* workspace = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, int>, Plan> plans;  // by row bucket

  template <class F>
  void bind(F& fn, const char* name) {
    fn = reinterpret_cast<F>(dlsym(lib, name));
    if (!fn) throw std::runtime_error(path + ": no symbol " + name);
  }

  // Column-major cuBLASLt view of the row-major product: y^T [n][m] = w [n][k] (as stored,
  // k x n column-major, transposed) times x^T (k x m column-major, as stored).
  Plan& plan(int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy, int dtype, int out_dtype) {
    const int64_t bucket = gemm_row_bucket(m);
    auto key = std::make_tuple(bucket, n, k, ldx, ldy, dtype, out_dtype);
    auto it = plans.find(key);
    if (it != plans.end()) {
      set_rows(it->second, m);
      return it->second;
    }
    Plan p;
    const int dt = data_type(dtype), dt_out = data_type(out_dtype);
    ok(api.desc_create(&p.desc, kComputeF32, kR32F), "MatmulDescCreate");
    const int32_t trans_a = kOpT, trans_b = kOpN;
    ok(api.desc_set(p.desc, kDescTransA, &trans_a, sizeof(trans_a)), "MatmulDescSetAttribute(TRANSA)");
    ok(api.desc_set(p.desc, kDescTransB, &trans_b, sizeof(trans_b)), "MatmulDescSetAttribute(TRANSB)");
    ok(api.layout_create(&p.a, dt, k, n, k), "MatrixLayoutCreate(A)");
    ok(api.layout_create(&p.b, dt, k, bucket, ldx), "MatrixLayoutCreate(B)");
    ok(api.layout_create(&p.c, dt_out, n, bucket, ldy), "MatrixLayoutCreate(C)");
    p.rows = bucket;
    p.algo = heuristic(p);
    set_rows(p, m);
    return plans.emplace(key, p).first->second;
  }

  void set_rows(Plan& p, int64_t m) {
    if (p.rows == m) return;
    const uint64_t cols = static_cast<uint64_t>(m);
    ok(api.layout_set(p.b, kLayoutCols, &cols, sizeof(cols)), "MatrixLayoutSetAttribute(B)");
    ok(api.layout_set(p.c, kLayoutCols, &cols, sizeof(cols)), "MatrixLayoutSetAttribute(C)");
    p.rows = m;
  }

  // The heuristic's best algorithm for the plan's layouts as they are now.
  Algo heuristic(const Plan& p) {
    Preference pref = nullptr;
    ok(api.pref_create(&pref), "MatmulPreferenceCreate");
    const uint64_t ws = kWorkspaceBytes;
    ok(api.pref_set(pref, kPrefMaxWorkspace, &ws, sizeof(ws)), "MatmulPreferenceSetAttribute");
    HeuristicResult result{};
    int found = 0;
    const Status s = api.heuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    api.pref_destroy(pref);
    ok(s, "MatmulAlgoGetHeuristic");
    if (found == 0) throw std::runtime_error("cuBLASLt found no algorithm for a GEMM of this shape");
    return result.algo;
  }
};

int64_t gemm_row_bucket(int64_t m) {
  if (m <= 64) return m;  // decode batches: each its own plan
  int64_t octave = 64;    // above: four buckets per doubling, so a few dozen plans per shape in all
  while (octave * 2 < m) octave *= 2;
  const int64_t step = octave / 4;
  return (m + step - 1) / step * step;
}

CublasLtGemm::CublasLtGemm(const std::string& library) : impl_(std::make_unique<Impl>()) {
  std::vector<std::string> tried;
  std::vector<std::string> candidates;
  if (!library.empty()) candidates.push_back(library);
  else if (const char* env = std::getenv("CSERVE_CUBLASLT"); env && *env) candidates.push_back(env);
  else candidates = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  for (const auto& c : candidates) {
    impl_->lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (impl_->lib) {
      impl_->path = c;
      break;
    }
    tried.push_back(c + " (" + dlerror() + ")");
  }
  if (!impl_->lib) {
    std::string msg = "cannot load cuBLASLt; tried:";
    for (const auto& t : tried) msg += " " + t;
    throw std::runtime_error(msg + " (install nvidia-cublas or set CSERVE_CUBLASLT)");
  }
  Api& a = impl_->api;
  impl_->bind(a.create, "cublasLtCreate");
  impl_->bind(a.destroy, "cublasLtDestroy");
  impl_->bind(a.desc_create, "cublasLtMatmulDescCreate");
  impl_->bind(a.desc_destroy, "cublasLtMatmulDescDestroy");
  impl_->bind(a.desc_set, "cublasLtMatmulDescSetAttribute");
  impl_->bind(a.layout_create, "cublasLtMatrixLayoutCreate");
  impl_->bind(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
  impl_->bind(a.layout_set, "cublasLtMatrixLayoutSetAttribute");
  impl_->bind(a.pref_create, "cublasLtMatmulPreferenceCreate");
  impl_->bind(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
  impl_->bind(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
  impl_->bind(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  impl_->bind(a.matmul, "cublasLtMatmul");
  ok(a.create(&impl_->handle), "Create");
  if (cudaMalloc(&impl_->workspace, kWorkspaceBytes) != cudaSuccess)
    throw std::runtime_error("cuBLASLt: cannot allocate the GEMM workspace");
}

CublasLtGemm::~CublasLtGemm() {
  if (!impl_) return;
  Api& a = impl_->api;
  for (auto& [key, p] : impl_->plans) {
    a.layout_destroy(p.a);
    a.layout_destroy(p.b);
    a.layout_destroy(p.c);
    a.desc_destroy(p.desc);
  }
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->handle) a.destroy(impl_->handle);
  if (impl_->lib) dlclose(impl_->lib);
}

void CublasLtGemm::run(void* y, int64_t ldy, const void* x, int64_t ldx, const void* w, int64_t m, int64_t n,
                       int64_t k, int dtype, bool accumulate, cudaStream_t stream, int out_dtype) {
  if (m == 0 || n == 0) return;
  Plan& p = impl_->plan(m, n, k, ldx, ldy, dtype, out_dtype < 0 ? dtype : out_dtype);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  auto matmul = [&](const Algo& algo) {
    return impl_->api.matmul(impl_->handle, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo,
                             impl_->workspace, kWorkspaceBytes, stream);
  };
  Status s = matmul(p.algo);
  // The bucket's algorithm may not take this row count: the heuristic's own choice for it
  // (cuBLASLt keeps a cache of its heuristic answers).
  if (s != 0) s = matmul(impl_->heuristic(p));
  ok(s, "Matmul");
}

size_t CublasLtGemm::plan_count() const { return impl_->plans.size(); }

const std::string& CublasLtGemm::library() const { return impl_->path; }

}  // namespace cserve::cuda
