// The compute ceilings of a CPU with AMX, beside its AVX-512 ones: tdpbf16ps (bf16, 16x16x32
// multiply-adds per instruction) and tdpbssd (int8, 16x16x64) on tiles that stay in registers
// (4 independent accumulators), and vdpbf16ps / vpdpbusd chains (12 independent), 1 and 2
// threads. The AMX ceilings in docs/benchmarks.md come from here:
//   g++ -O2 -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mavx512vnni -mamx-tile -mamx-bf16 -mamx-int8 \
//       benchmarks/cpu_probes/amx_peak.cpp -o amx_peak -lpthread && ./amx_peak
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <thread>

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static TileConfig cfg;
alignas(64) static uint8_t data[16 * 64];

double seconds(const std::function<void()>& f) {
  auto t = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Giga operations (2 per multiply-add) per second of one thread.
double amx(bool int8, long iters) {
  _tile_loadconfig(&cfg);
  _tile_loadd(4, data, 64);
  _tile_loadd(5, data, 64);
  for (int t = 0; t < 4; ++t) _tile_loadd(0, data, 64);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  double dt = seconds([&] {
    for (long i = 0; i < iters; ++i) {
      if (int8) {
        _tile_dpbssd(0, 4, 5); _tile_dpbssd(1, 4, 5); _tile_dpbssd(2, 4, 5); _tile_dpbssd(3, 4, 5);
      } else {
        _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 5); _tile_dpbf16ps(2, 4, 5); _tile_dpbf16ps(3, 4, 5);
      }
    }
  });
  _tile_stored(0, data, 64);
  _tile_release();
  const double per = int8 ? 16.0 * 16 * 64 * 2 : 16.0 * 16 * 32 * 2;
  return iters * 4 * per / dt / 1e9;
}

double avx512(bool int8, long iters) {
  __m512i acc[12];
  for (auto& a : acc) a = _mm512_setzero_si512();
  __m512i a = _mm512_set1_epi32(0x3f803f80), b = a;
  double dt = seconds([&] {
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
      for (int j = 0; j < 12; ++j) {
        if (int8) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
        else acc[j] = (__m512i)_mm512_dpbf16_ps((__m512)acc[j], (__m512bh)a, (__m512bh)b);
      }
      asm volatile("" : "+v"(a));
    }
  });
  long s = 0;
  for (auto& v : acc) s += _mm512_reduce_add_epi32(v);
  if (s == 1) std::printf("x");
  return iters * 12.0 * (int8 ? 128 : 64) / dt / 1e9;
}

void report(const char* name, const std::function<double()>& f) {
  const double one = f();
  double r[2];
  std::thread t1([&] { r[0] = f(); }), t2([&] { r[1] = f(); });
  t1.join();
  t2.join();
  std::printf("%-22s 1 thread %6.0f, 2 threads %6.0f G ops/s\n", name, one, r[0] + r[1]);
}

int main() {
  const bool amx_ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;  // ARCH_REQ_XCOMP_PERM, XTILEDATA
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  report("avx512 vdpbf16ps", [] { return avx512(false, 100000000); });
  report("avx512 vpdpbusd", [] { return avx512(true, 100000000); });
  if (!amx_ok) return std::printf("no AMX permission\n"), 0;
  report("amx tdpbf16ps", [] { return amx(false, 20000000); });
  report("amx tdpbssd", [] { return amx(true, 20000000); });
}
