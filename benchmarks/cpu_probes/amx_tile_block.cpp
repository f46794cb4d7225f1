// The AMX GEMM's inner block alone, one thread: 2 row tiles x 2 panels of sums (4 C tiles), two
// A and two B tile loads per 32-k step, over `steps` steps, cycling through `a_blocks` distinct
// row pairs of x and `b_blocks` distinct panel pairs (their working set decides whether the
// loads come from L1 or L2). Why gemm_amx.cpp takes k in blocks of at most 8 steps:
//   g++ -O2 -mamx-tile -mamx-bf16 -mavx512f benchmarks/cpu_probes/amx_tile_block.cpp -o amx_tile_block
//   ./amx_tile_block 18 4 1; ./amx_tile_block 8 4 1      # steps, a_blocks, b_blocks
// CLOAD=1 starts each block from sums in memory (as a later k block does) instead of zeros.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((noinline)) void block(const uint16_t* a0, const uint16_t* a1, const uint16_t* b0, const uint16_t* b1,
                                     int steps, bool load_sums, float* c) {
  if (load_sums) {
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c + 256, 64);
    _tile_loadd(2, c + 512, 64);
    _tile_loadd(3, c + 768, 64);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int s = 0; s < steps; ++s) {
    _tile_loadd(6, b0 + s * 512, 64);
    _tile_loadd(4, a0 + s * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + s * 512, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + s * 512, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

}  // namespace

int main(int argc, char** argv) {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) {
    std::printf("no AMX tile permission\n");
    return 1;
  }
  static TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int steps = argc > 1 ? atoi(argv[1]) : 8;
  const int a_blocks = argc > 2 ? atoi(argv[2]) : 4, b_blocks = argc > 3 ? atoi(argv[3]) : 1;
  const bool load_sums = std::getenv("CLOAD") != nullptr;
  const size_t per_pair = size_t(2) * steps * 512;  // two tiles of 1 KiB per step
  std::vector<uint16_t> a(a_blocks * per_pair + 32, 0x3f80), b(b_blocks * per_pair + 32, 0x3f80);
  uint16_t* a_base = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(a.data()) + 63) & ~uintptr_t{63});
  uint16_t* b_base = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(b.data()) + 63) & ~uintptr_t{63});
  alignas(64) static float c[1024];
  const double flops_per_block = 4.0 * steps * 16 * 16 * 32 * 2;
  const long blocks = static_cast<long>(2e10 / flops_per_block);
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long n = 0; n < blocks; ++n) {
      const uint16_t* ap = a_base + (n % a_blocks) * per_pair;
      const uint16_t* bp = b_base + (n / a_blocks % b_blocks) * per_pair;
      block(ap, ap + steps * 512, bp, bp + steps * 512, steps, load_sums, c);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("steps %d, %d row pairs (%zu KiB), %d panel pairs (%zu KiB)%s: %.0f GFLOP/s\n", steps, a_blocks,
                a_blocks * per_pair * 2 / 1024, b_blocks, b_blocks * per_pair * 2 / 1024,
                load_sums ? ", sums loaded" : "", blocks * flops_per_block / s / 1e9);
  }
  return 0;
}
