// gemm(): splits the weight panels over the thread pool and dispatches to the
// kernel of the best instruction set; plus the portable scalar kernel.
#include <algorithm>
#include <string>
#include <vector>

#include "backend/cpu/gemm_internal.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/row_ops.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace detail {

void gemm_panels_scalar(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  const PackedMatrix& w = *a.w;
  const int64_t k = w.k, kp = w.k_padded;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t col0 = p * kPanel;
    const int64_t cols = std::min<int64_t>(kPanel, w.n - col0);
    for (int64_t r = 0; r < a.m; ++r) {
      const float* x = a.x + r * a.ldx;
      float acc[kPanel] = {};
      if (w.dtype == DType::F32) {
        const float* wp = w.data.as<float>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c)
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * wp[c * kPanel + l];
      } else if (w.dtype == DType::F16) {
        const uint16_t* wp = w.data.as<uint16_t>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c)
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * f16_to_f32(wp[c * kPanel + l]);
      } else {
        const uint16_t* wp = w.data.as<uint16_t>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c) {
          const uint16_t* pair = wp + (c / 2) * 2 * kPanel + (c & 1);
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * bf16_to_f32(pair[2 * l]);
        }
      }
      float* y = a.y + r * a.ldy + col0;
      for (int64_t l = 0; l < cols; ++l) {
        float v = acc[l];
        if (a.bias != nullptr) v += a.bias[col0 + l];
        y[l] = a.accumulate ? y[l] + v : v;
      }
    }
  }
}

}  // namespace detail

namespace {

using PanelKernel = void (*)(const detail::GemmArgs&, int64_t, int64_t);

// Whether bf16 weights take the AMX tiles: for every row count, as a row alone is as fast either
// way (bandwidth-bound; benchmarks/cpu_probes/amx_gemm.cpp), and on one kernel a row's result
// never depends on its batch (a verification step equals plain decoding bit for bit).
bool amx_kernel(const PackedMatrix& w) {
  return cpu_isa() == Isa::Avx512Bf16 && w.dtype == DType::BF16 && w.k_padded % 32 == 0 && cpu_has_amx();
}

// The kernel that gemm() takes for w where it can also fuse a gated activation: AMX tiles or
// vdpbf16ps (bf16 weights on an AVX512_BF16 CPU); none elsewhere.
enum class Fused { None, Amx, Dp };
Fused fused_kernel(const PackedMatrix& w) {
  if (amx_kernel(w)) return Fused::Amx;
  return cpu_isa() == Isa::Avx512Bf16 && w.dtype == DType::BF16 ? Fused::Dp : Fused::None;
}
PanelKernel fused_panels(Fused f) {
  return f == Fused::Amx ? detail::gemm_panels_amx_bf16 : detail::gemm_panels_avx512bf16;
}

// Throws unless x's rows hold k values and y's rows `width` ("n" or "n / 2").
void check_leading_dims(const char* op, int64_t ldx, int64_t k, int64_t ldy, int64_t width, const char* width_name) {
  if (ldx < k || ldy < width) {
    throw InvalidArgument(std::string(op) + ": leading dimensions too small (ldx " + std::to_string(ldx) + " < k " +
                          std::to_string(k) + " or ldy " + std::to_string(ldy) + " < " + width_name + " " +
                          std::to_string(width) + ")");
  }
}

detail::GemmArgs gemm_args(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                           bool accumulate) {
  detail::GemmArgs a;
  a.w = &w;
  a.x = x;
  a.m = m;
  a.ldx = ldx;
  a.y = y;
  a.ldy = ldy;
  a.accumulate = accumulate;
  a.bias = w.bias.empty() ? nullptr : w.bias.data();
  return a;
}

// x rounded to bf16 once per call, for the vdpbf16ps and AMX kernels; the scratch lives with the
// calling thread. AMX loads whole 16-row tiles: the rows past m are allocated (their sums are
// never stored).
void round_x_bf16(detail::GemmArgs& a, bool tiles, ThreadPool& pool) {
  const PackedMatrix& w = *a.w;
  thread_local std::vector<uint16_t> xb;
  const int64_t ldxb = (w.k_padded + 31) / 32 * 32;
  const int64_t rows = (a.m + 15) / 16 * 16;
  uint16_t* xbp = aligned_scratch(xb, static_cast<size_t>(rows * ldxb));
  const int64_t row_grain = std::max<int64_t>(1, (int64_t{1} << 16) / w.k);
  pool.parallel_for(a.m, row_grain, [&](int64_t r0, int64_t r1) {
    if (tiles) detail::convert_rows_bf16_tiles_avx512bf16(a.x, r0, r1, a.ldx, w.k, ldxb, xbp);
    else detail::convert_rows_bf16_avx512bf16(a.x + r0 * a.ldx, r1 - r0, a.ldx, w.k, w.k_padded, xbp + r0 * ldxb, ldxb);
  });
  a.xb = xbp;
  a.ldxb = ldxb;
}

constexpr int64_t kRangeBytes = int64_t{1} << 20;
// Rows per block where the kernels other than AMX's split a prefill's rows (a multiple of their
// row chunks, ~220 KiB of bf16 x at k = 576: in L2 across a range's panels).
constexpr int64_t kRowBlock = 192;

// Block `b` of a's rows alone: for the AMX kernel its row tiles [b rb, b rb + rb) of the tiled x
// (rb tiles a block), for the others rows [b kRowBlock, ...) by offset into x, its bf16 rows and
// the result.
detail::GemmArgs row_block(const detail::GemmArgs& a, int64_t b, int64_t rb) {
  detail::GemmArgs part = a;
  if (rb > 0) {
    part.tile_begin = b * rb;
    part.tile_end = std::min((a.m + 15) / 16, part.tile_begin + rb);
    return part;
  }
  const int64_t r0 = b * kRowBlock;
  part.m = std::min(a.m, r0 + kRowBlock) - r0;
  part.x = a.x != nullptr ? a.x + r0 * a.ldx : nullptr;
  part.xb = a.xb != nullptr ? a.xb + r0 * a.ldxb : nullptr;
  part.y = a.y != nullptr ? a.y + r0 * a.ldy : nullptr;
  part.yb = a.yb != nullptr ? a.yb + r0 * a.ldyb : nullptr;
  return part;
}

// Whether the work is split over blocks of rows as well as panels. The AMX kernel: where x (bf16)
// outweighs half the weights and there are at least two row blocks for each thread. The others:
// two whole blocks for each thread (a prefill); groups of panels alone left a thread idle for up
// to a group at the end of GEMMs with few (9 for a 576-wide output: 10% of the prefill's o
// projection on Zen 5).
bool split_rows_too(const detail::GemmArgs& a, bool amx, int64_t row_blocks, int64_t weight_bytes,
                    ThreadPool& pool) {
  const int64_t threads = pool.num_threads();
  if (threads <= 1) return false;
  if (!amx) return a.m >= 2 * threads * kRowBlock;
  return row_blocks >= 2 * threads && a.m * a.ldxb * 2 > weight_bytes / 2;
}

// Output panels [0, num_panels) over the pool, each reading `weights_per_panel` panels of w.
// Chunks are whole groups of 4 panels (the kernels' widest tile) of at least ~64 KiB of weights,
// fewer when many rows make each panel expensive.
void run_panels(const detail::GemmArgs& a, PanelKernel kernel, int64_t num_panels, int64_t weights_per_panel,
                ThreadPool& pool) {
  constexpr int64_t kGroup = 4;
  const PackedMatrix& w = *a.w;
  const int64_t num_groups = (num_panels + kGroup - 1) / kGroup;
  const int64_t group_bytes =
      kGroup * weights_per_panel * w.k_padded * detail::kPanel * static_cast<int64_t>(dtype_size(w.dtype));
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (group_bytes * (1 + a.m / 4)));
  // Row blocks: the AMX kernel's in tiles of its tiled x (a.ldxb), the others' of kRowBlock rows.
  const bool amx = kernel == detail::gemm_panels_amx_bf16;
  const int64_t rb = amx ? detail::amx_row_block_tiles(a.ldxb) : 0;
  const int64_t row_blocks = amx ? ((a.m + 15) / 16 + rb - 1) / rb : (a.m + kRowBlock - 1) / kRowBlock;
  if (split_rows_too(a, amx, row_blocks, num_groups * group_bytes, pool)) {
    // Tasks of (a range of panels of ~1 MiB of weights, a block of rows), the panel ranges outer:
    // a thread's consecutive tasks share their weights in L2, and x is read once per range
    // instead of once per chunk of panels (prefill GEMMs whose x outweighs the weights). A row's
    // sums do not depend on the others.
    const int64_t ranges = (num_groups * group_bytes + kRangeBytes - 1) / kRangeBytes;
    pool.parallel_for(ranges * row_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t range = t / row_blocks;
        kernel(row_block(a, t % row_blocks, rb), num_groups * range / ranges * kGroup,
               std::min(num_panels, num_groups * (range + 1) / ranges * kGroup));
      }
    });
    return;
  }
  // A thread's groups next to each other, so its prefetches past a group's end go to the next one
  // it takes: with chunks anywhere every chunk began cold (decode_gemms 16 on Zen 5, alternating
  // in one process: 6.9-7.1 -> 6.5-6.8 ms; one row 4.9-5.0 -> 4.7-4.8 ms).
  pool.parallel_walk(num_groups, grain, [&](int64_t begin, int64_t end, bool descending) {
    if (!descending) {
      kernel(a, begin * kGroup, std::min(num_panels, end * kGroup));
      return;
    }
    detail::GemmArgs down = a;
    down.descending = true;
    for (int64_t g = end - 1; g >= begin; --g) kernel(down, g * kGroup, std::min(num_panels, (g + 1) * kGroup));
  });
}

// a's gate panels on kernel f with the activation fused: gate(g, u) into a.y, or a.yb where set.
void run_gated(detail::GemmArgs& a, Fused f, GatedActivation act, ThreadPool& pool) {
  const detail::RowOps& ops = detail::row_ops();
  a.gate = act == GatedActivation::GeluTanh ? ops.gelu_tanh_mul : ops.silu_mul;
  round_x_bf16(a, f == Fused::Amx, pool);
  run_panels(a, fused_panels(f), a.w->n / 2 / detail::kPanel, 2, pool);
}

}  // namespace

void gemm(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
          bool accumulate, ThreadPool& pool) {
  if (m <= 0) return;
  check_leading_dims("gemm", ldx, w.k, ldy, w.n, "n");
  detail::GemmArgs a = gemm_args(w, x, m, ldx, y, ldy, accumulate);
  const Isa isa = cpu_isa();
  PanelKernel kernel = detail::gemm_panels_scalar;
  switch (isa) {
    case Isa::Scalar: kernel = detail::gemm_panels_scalar; break;
    case Isa::Avx2: kernel = detail::gemm_panels_avx2; break;
    case Isa::Avx512: kernel = detail::gemm_panels_avx512; break;
    case Isa::Avx512Bf16: kernel = detail::gemm_panels_avx512bf16; break;
  }
  if (amx_kernel(w)) kernel = detail::gemm_panels_amx_bf16;
  if (isa == Isa::Avx512Bf16 && w.dtype == DType::BF16) round_x_bf16(a, amx_kernel(w), pool);
  run_panels(a, kernel, w.n_padded / detail::kPanel, 1, pool);
}

bool gemm_gated(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, GatedActivation act, float* out,
                int64_t ldo, ThreadPool& pool) {
  const int64_t half = w.n / 2;
  const Fused f = fused_kernel(w);
  if (f == Fused::None || w.n % 2 != 0 || half % detail::kPanel != 0) return false;
  if (m <= 0) return true;
  check_leading_dims("gemm_gated", ldx, w.k, ldo, half, "n / 2");
  detail::GemmArgs a = gemm_args(w, x, m, ldx, out, ldo, false);
  run_gated(a, f, act, pool);
  return true;
}

bool gemm_mlp(const PackedMatrix& gate_up, const PackedMatrix& down, const float* x, int64_t m, int64_t ldx,
              GatedActivation act, float* out, int64_t ldo, bool accumulate, ThreadPool& pool) {
  const int64_t half = gate_up.n / 2;
  // The activation lands in down's x as that kernel reads it: both GEMMs on one kernel, down's k
  // the gate's width with no padding to zero (whole 32-value steps for AMX's tiles).
  const Fused f = fused_kernel(gate_up);
  if (f == Fused::None || fused_kernel(down) != f || gate_up.n % 2 != 0 ||
      half % (f == Fused::Amx ? 32 : detail::kPanel) != 0 || down.k != half || down.k_padded != half)
    return false;
  if (m <= 0) return true;
  check_leading_dims("gemm_mlp", ldx, gate_up.k, ldo, down.n, "n");
  detail::GemmArgs a = gemm_args(gate_up, x, m, ldx, nullptr, 0, false);
  thread_local std::vector<uint16_t> act_rows;  // up to a whole tile, as round_x_bf16's
  a.yb = aligned_scratch(act_rows, static_cast<size_t>((m + 15) / 16 * 16 * half));
  a.ldyb = half;
  run_gated(a, f, act, pool);
  detail::GemmArgs b = gemm_args(down, nullptr, m, half, out, ldo, accumulate);
  b.xb = a.yb;
  b.ldxb = half;
  run_panels(b, fused_panels(f), down.n_padded / detail::kPanel, 1, pool);
  return true;
}

}  // namespace cserve::cpu
