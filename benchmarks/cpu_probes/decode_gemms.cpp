// The GEMMs of one SmolLM2-135M decode step in bf16 (30 layers of qkv 960x576, o 576x576,
// gate_up 3072x576, down 576x1536, then the 49152x576 LM head) through cserve's CPU gemm(),
// m rows at a time on 2 threads: median and best of `reps` steps. Against a build tree:
//   g++ -O2 -std=c++17 -I cpp -I cpp/include benchmarks/cpu_probes/decode_gemms.cpp \
//       BUILD/libcserve_backend.a BUILD/libcserve_core.a BUILD/libcserve_util.a -lpthread -ldl -o decode_gemms
//   ./decode_gemms 16 30     # m = 16 rows, 30 steps
// THREADS=N runs the pool with N threads (default 2).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "backend/cpu/kernels.h"
#include "util/thread_pool.h"
using namespace cserve;
int main(int argc, char** argv) {
  int m = argc > 1 ? atoi(argv[1]) : 16;
  int reps = argc > 2 ? atoi(argv[2]) : 20;
  ThreadPool pool(getenv("THREADS") ? atoi(getenv("THREADS")) : 2);
  struct L { int64_t n, k; };
  std::vector<L> shapes;
  for (int l = 0; l < 30; ++l) { shapes.push_back({960, 576}); shapes.push_back({576, 576}); shapes.push_back({3072, 576}); shapes.push_back({576, 1536}); }
  shapes.push_back({49152, 576});
  std::vector<cpu::PackedMatrix> ws;
  double bytes = 0;
  for (auto s : shapes) {
    std::vector<float> w(s.n * s.k);
    for (auto& v : w) v = (rand() / (float)RAND_MAX - 0.5f) * 0.01f;
    Tensor t{w.data(), DType::F32, {s.n, s.k}};
    ws.push_back(cpu::pack_matrix({t}, {}, DType::BF16));
    bytes += s.n * s.k * 2.0;
  }
  std::vector<float> x(m * 1536, 0.01f), y(m * 49152);
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < shapes.size(); ++i) cpu::gemm(ws[i], x.data(), m, 1536, y.data(), 49152, false, pool);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  double med = times[times.size() / 2], best = times[0];
  double flops = 2.0 * m * bytes / 2;
  printf("m=%d: median %.2f ms best %.2f ms; %.1f GB/s, %.0f GFLOP/s (median)\n", m, med * 1e3, best * 1e3, bytes / med / 1e9, flops / med / 1e9);
}
