// The GEMMs of one SmolLM2-135M forward (30 layers of qkv 960x576, o 576x576, gate_up 3072x576,
// down 576x1536, then the 49152x576 LM head) for m rows, through cserve's CPU gemm() (bf16
// weights) or qgemm() (Q4_1 or Q8_0 blocks), on 2 threads: median and best of `reps` passes.
// Which kernels run follows CSERVE_ISA as in the server: unset (AMX tiles for bf16 where the CPU
// has them) or "avx512_bf16" (vdpbf16ps), to compare the two in one session; the quantized GEMM
// runs vpdpbusd either way (an AMX-INT8 version, exact and so scaled block by block, measured
// slower than vpdpbusd at every row count here, 4 to 512). Against a build tree:
//   g++ -O2 -std=c++17 -I cpp -I cpp/include benchmarks/cpu_probes/amx_gemm.cpp \
//       BUILD/libcserve_backend.a BUILD/libcserve_core.a BUILD/libcserve_util.a -lpthread -ldl -o amx_gemm
//   ./amx_gemm q4_1 16 20      # kind (bf16, q4_1, q8_0), m rows, passes
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/qgemm.h"
#include "core/quant.h"
#include "util/thread_pool.h"

using namespace cserve;

namespace {

struct Shape {
  int64_t n, k;
};

// Random ggml blocks of `type` for an n x k matrix: f16 d (and m) small, random codes.
std::vector<uint8_t> random_blocks(GgmlType type, int64_t n, int64_t k) {
  const bool q41 = type == GgmlType::Q4_1;
  const int64_t block_bytes = q41 ? 20 : 34, blocks = n * k / 32;
  std::vector<uint8_t> raw(static_cast<size_t>(blocks * block_bytes));
  for (auto& b : raw) b = static_cast<uint8_t>(rand());
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* b = raw.data() + i * block_bytes;
    const uint16_t d = f32_to_f16(0.001f + 0.01f * (rand() / static_cast<float>(RAND_MAX)));
    std::memcpy(b, &d, 2);
    if (q41) {
      const uint16_t m = f32_to_f16(-0.05f);
      std::memcpy(b + 2, &m, 2);
    }
  }
  return raw;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string kind = argc > 1 ? argv[1] : "bf16";
  const int64_t m = argc > 2 ? atoi(argv[2]) : 16;
  const int reps = argc > 3 ? atoi(argv[3]) : 20;
  ThreadPool pool(2);
  std::vector<Shape> shapes;
  for (int l = 0; l < 30; ++l) {
    shapes.push_back({960, 576});
    shapes.push_back({576, 576});
    shapes.push_back({3072, 576});
    shapes.push_back({576, 1536});
  }
  shapes.push_back({49152, 576});
  std::vector<cpu::PackedMatrix> dense;
  std::vector<cpu::QuantMatrix> quant;
  std::vector<std::vector<uint8_t>> raws;
  double weight_bytes = 0, flops = 0;
  for (const Shape& s : shapes) {
    flops += 2.0 * m * s.n * s.k;
    if (kind == "bf16") {
      std::vector<float> w(static_cast<size_t>(s.n * s.k));
      for (auto& v : w) v = (rand() / static_cast<float>(RAND_MAX) - 0.5f) * 0.01f;
      Tensor t{w.data(), DType::F32, {s.n, s.k}};
      dense.push_back(cpu::pack_matrix({t}, {}, DType::BF16));
      weight_bytes += s.n * s.k * 2.0;
    } else {
      const GgmlType type = kind == "q4_1" ? GgmlType::Q4_1 : GgmlType::Q8_0;
      raws.push_back(random_blocks(type, s.n, s.k));
      QuantPart part;
      part.type = type;
      part.data = raws.back().data();
      part.rows = s.n;
      part.cols = s.k;
      part.row_stride = raws.back().size() / s.n;
      quant.push_back(cpu::pack_quant_matrix({part}, pool));
      weight_bytes += raws.back().size();
    }
  }
  std::vector<float> x(static_cast<size_t>(m * 1536)), y(static_cast<size_t>(m * 49152));
  for (auto& v : x) v = rand() / static_cast<float>(RAND_MAX) - 0.5f;
  std::vector<double> times;
  for (int r = 0; r < reps + 2; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Shape& s = shapes[i];
      if (kind == "bf16") cpu::gemm(dense[i], x.data(), m, s.k, y.data(), s.n, false, pool);
      else cpu::qgemm(quant[i], x.data(), m, s.k, y.data(), s.n, false, pool);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 2) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const char* isa = std::getenv("CSERVE_ISA");
  std::printf("%s m=%lld CSERVE_ISA=%s amx=%d: median %.2f ms best %.2f ms; %.1f GB/s of weights, %.0f GFLOP/s\n",
              kind.c_str(), static_cast<long long>(m), isa ? isa : "", cpu::cpu_has_amx() ? 1 : 0, med, times[0],
              weight_bytes / med / 1e6, flops / med / 1e6);
  return 0;
}
