// The bf16 GEMMs of one SmolLM2-135M layer for a prefill of m rows (qkv 960x576, o 576x576,
// gate_up 3072x576 plain and with its activation fused, down 576x1536), through cserve's CPU
// gemm() / gemm_gated() on 2 threads: the best of `reps` calls each, x in float32 as the model
// passes it. torch's rate on the same shapes (bf16 in and out) for comparison:
//   python -c "import torch,time; torch.set_num_threads(2); ..."   (see docs/benchmarks.md)
// Against a build tree:
//   g++ -O2 -std=c++17 -I cpp -I cpp/include benchmarks/cpu_probes/prefill_gemms.cpp \
//       BUILD/libcserve_backend.a BUILD/libcserve_core.a BUILD/libcserve_util.a -lpthread -ldl -o prefill_gemms
//   ./prefill_gemms 1600 30      # m rows, calls per shape
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cpu/kernels.h"
#include "util/thread_pool.h"

using namespace cserve;

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? atoi(argv[1]) : 1600;
  const int reps = argc > 2 ? atoi(argv[2]) : 30;
  ThreadPool pool(2);
  struct Shape {
    int64_t n, k;
    bool gated;
  };
  const Shape shapes[] = {{960, 576, false}, {576, 576, false}, {3072, 576, false}, {3072, 576, true},
                          {576, 1536, false}};
  std::vector<float> x(static_cast<size_t>(m * 1536)), y(static_cast<size_t>(m * 3072));
  for (auto& v : x) v = rand() / static_cast<float>(RAND_MAX) - 0.5f;
  for (const Shape& s : shapes) {
    std::vector<float> w(static_cast<size_t>(s.n * s.k));
    for (auto& v : w) v = (rand() / static_cast<float>(RAND_MAX) - 0.5f) * 0.01f;
    const Tensor t{w.data(), DType::F32, {s.n, s.k}};
    const cpu::PackedMatrix packed = cpu::pack_matrix({t}, {}, DType::BF16);
    double best = 1e30;
    if (s.gated && !cpu::gemm_gated(packed, x.data(), 0, s.k, GatedActivation::Silu, y.data(), s.n / 2, pool)) {
      std::printf("%lld x %lld gated: no fused kernel on this CPU\n", static_cast<long long>(s.n),
                  static_cast<long long>(s.k));
      continue;
    }
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      if (s.gated) cpu::gemm_gated(packed, x.data(), m, s.k, GatedActivation::Silu, y.data(), s.n / 2, pool);
      else cpu::gemm(packed, x.data(), m, s.k, y.data(), s.n, false, pool);
      best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("%lld x %lld%s, m = %lld: %.3f ms, %.0f GFLOP/s\n", static_cast<long long>(s.n),
                static_cast<long long>(s.k), s.gated ? " gated" : "", static_cast<long long>(m), best,
                2.0 * m * s.n * s.k / best / 1e6);
  }
  return 0;
}
