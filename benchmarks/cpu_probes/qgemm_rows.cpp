// The quantized GEMM kernels of one thread over SmolLM2-135M's decode-step weights (30
// layers of qkv 960x576, o 576x576, gate_up 3072x576, down 576x1536), for m activation
// rows: microseconds per step (best of `reps`), per kernel and row count. Kernels: the
// plain AVX2 one and the AVX-VNNI one at several row blockings (rN: N rows per pass for m > 8), the AVX-VNNI one, the
// AVX-512 VNNI one, and optionally an older AVX2 kernel (OLD_AVX2) for before/after.
//   B=build/cp311-cp311-linux_x86_64
//   g++ -O2 -std=c++17 -mavx2 -mfma -mf16c -mavxvnni -I cpp -I cpp/include \
//       benchmarks/cpu_probes/qgemm_rows.cpp cpp/backend/cpu/qgemm_avx512vnni.cpp \
//       $B/libcserve_core.a $B/libcserve_util.a -lpthread -ldl -o /tmp/qgemm_rows
//   (qgemm_avx512vnni.cpp needs -mavx512f -mavx512bw -mavx512vl -mavx512vnni: compile it
//   to an object first; an old kernel: g++ -c -DOLD_AVX2 ... -Dqgemm_panels_avx2=qgemm_panels_avx2_old)
//   /tmp/qgemm_rows 4 "1 2 4 8 16" 20
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/qgemm_avx2_impl.h"

namespace cserve::cpu::detail {
void qgemm_panels_avx2_old(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end);
}
using namespace cserve;
using namespace cserve::cpu;
using namespace cserve::cpu::detail;

using Kernel = void (*)(const QGemmArgs&, int64_t, int64_t);

QuantMatrix random_matrix(int bits, int64_t n, int64_t k, bool half, std::mt19937& rng) {
  QuantMatrix w;
  w.bits = bits;
  w.n = n;
  w.k = k;
  w.half_scales = half;
  w.blocks = k / kQBlock;
  w.panels = (n + kQPanel - 1) / kQPanel;
  w.codes = Buffer(static_cast<size_t>(w.panels * w.blocks) * w.block_bytes());
  w.scales = Buffer(static_cast<size_t>(w.panels * w.blocks * kQPanel) * w.scale_bytes());
  w.mins = Buffer(static_cast<size_t>(w.panels * w.blocks * kQPanel) * w.scale_bytes());
  for (size_t i = 0; i < w.codes.size(); ++i) w.codes.as<uint8_t>()[i] = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(-0.01f, 0.01f);
  for (size_t i = 0; i < w.scales.size() / w.scale_bytes(); ++i) {
    if (half) {
      w.scales.as<uint16_t>()[i] = f32_to_f16(u(rng));
      w.mins.as<uint16_t>()[i] = f32_to_f16(u(rng));
    } else {
      w.scales.as<float>()[i] = u(rng);
      w.mins.as<float>()[i] = u(rng);
    }
  }
  return w;
}

int main(int argc, char** argv) {
  const int bits = argc > 1 ? atoi(argv[1]) : 4;
  std::vector<int> ms;
  std::istringstream ss(argc > 2 ? argv[2] : "1 2 3 4 5 8 9 16 17");
  for (int v; ss >> v;) ms.push_back(v);
  const int reps = argc > 3 ? atoi(argv[3]) : 10;
  const bool half = argc > 4 ? atoi(argv[4]) != 0 : true;  // f16 scales (Q4_0, Q4_1, Q8_0) or f32
  std::mt19937 rng(1);
  struct Shape { int64_t n, k; };
  std::vector<Shape> shapes;
  for (int l = 0; l < 30; ++l) shapes.insert(shapes.end(), {{960, 576}, {576, 576}, {3072, 576}, {576, 1536}});
  std::vector<QuantMatrix> ws;
  for (auto s : shapes) ws.push_back(random_matrix(bits, s.n, s.k, half, rng));
  struct Named { const char* name; Kernel k; };
  std::vector<Named> kernels = {
#ifdef OLD_AVX2
      {"avx2_old", qgemm_panels_avx2_old},
#endif
      {"avx2_r8", dispatch<false, 8, 1, 3>}, {"avx2_r4", dispatch<false, 4, 1, 3>},
      {"avx2_r3", dispatch<false, 3, 1, 3>}, {"avx2_r6", dispatch<false, 6, 1, 3>},
      {"vnni_r8", dispatch<true, 8, 3, 4>}, {"vnni_r4", dispatch<true, 4, 3, 4>},
      {"vnni_r3", dispatch<true, 3, 3, 4>}, {"vnni_r6", dispatch<true, 6, 3, 4>},
      {"avx512vnni", qgemm_panels_avx512vnni}};
  printf("bits=%d scales=%s, us per decode step's GEMMs on one thread (best of %d)\n%-11s", bits,
         half ? "f16" : "f32", reps, "m");
  for (auto& kn : kernels) printf(" %10s", kn.name);
  printf("\n");
  for (int m : ms) {
    std::vector<float> x(static_cast<size_t>(m) * 1536), y(static_cast<size_t>(m) * 3072);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
    QuantActs a576, a1536;
    a576.reset(m, 576);
    a1536.reset(m, 1536);
    quantize_acts(x.data(), 1536, 0, m, a576);
    quantize_acts(x.data(), 1536, 0, m, a1536);
    printf("%-11d", m);
    // Round robin over the kernels, best time of each: a slow moment of the machine hits all.
    std::vector<double> best(kernels.size(), 1e30);
    for (int r = 0; r < reps; ++r) {
      for (size_t kn = 0; kn < kernels.size(); ++kn) {
        auto t0 = std::chrono::steady_clock::now();
        for (auto& w : ws) {
          QGemmArgs g{&w, w.k == 576 ? &a576 : &a1536, y.data(), 3072, false};
          kernels[kn].k(g, 0, w.panels);
        }
        best[kn] = std::min(best[kn], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    }
    for (double b : best) printf(" %10.0f", b * 1e6);
    printf("\n");
  }
}
