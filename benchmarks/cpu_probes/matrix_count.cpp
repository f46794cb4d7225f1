// What a GEMM costs for being one matrix of many: `count` bf16 matrices of n x k one after the
// other (as a decode step's layers run), against one matrix of count x n rows of the same bytes,
// m rows of x, alternating the two three times in one process: the medians and the difference per
// matrix. Against a build tree:
//   g++ -O2 -std=c++17 -I cpp -I cpp/include benchmarks/cpu_probes/matrix_count.cpp \
//       BUILD/libcserve_backend.a BUILD/libcserve_core.a BUILD/libcserve_util.a -lpthread -ldl -o matrix_count
//   ./matrix_count 576 576 200 16     # n, k, count, m
// THREADS=N runs the pool with N threads (default 2). With count x n x k x 2 bytes past the last
// level cache (32 MiB here) both read their weights from memory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cpu/kernels.h"
#include "util/thread_pool.h"

using namespace cserve;

namespace {

double median_ms(const std::vector<cpu::PackedMatrix>& ws, int64_t m, const std::vector<float>& x,
                 std::vector<float>& y, int64_t ldy, ThreadPool& pool) {
  std::vector<double> times;
  for (int r = 0; r < 15; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& w : ws) cpu::gemm(w, x.data(), m, w.k, y.data(), ldy, false, pool);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 576, k = argc > 2 ? std::atoll(argv[2]) : 576;
  const int64_t count = argc > 3 ? std::atoll(argv[3]) : 200, m = argc > 4 ? std::atoll(argv[4]) : 16;
  ThreadPool pool(getenv("THREADS") ? std::atoi(getenv("THREADS")) : 2);
  std::vector<float> w(static_cast<size_t>(n * count * k));
  for (auto& v : w) v = (rand() / static_cast<float>(RAND_MAX) - 0.5f) * 0.01f;
  std::vector<cpu::PackedMatrix> many, one;
  for (int64_t i = 0; i < count; ++i)
    many.push_back(cpu::pack_matrix({Tensor{w.data() + i * n * k, DType::F32, {n, k}}}, {}, DType::BF16));
  one.push_back(cpu::pack_matrix({Tensor{w.data(), DType::F32, {n * count, k}}}, {}, DType::BF16));
  std::vector<float> x(static_cast<size_t>(m * k), 0.01f), y(static_cast<size_t>(m * n * count));
  const double bytes = 2.0 * n * k * count;
  for (int round = 0; round < 3; ++round) {
    const double a = median_ms(many, m, x, y, n * count, pool), b = median_ms(one, m, x, y, n * count, pool);
    std::printf("%lld x %lld x %lld, m = %lld: %lld matrices %.3f ms (%.1f GB/s), one %.3f ms (%.1f GB/s): "
                "%.2f us more per matrix\n",
                static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(count),
                static_cast<long long>(m), static_cast<long long>(count), a, bytes / a / 1e6, b, bytes / b / 1e6,
                (a - b) / count * 1e3);
  }
  return 0;
}
