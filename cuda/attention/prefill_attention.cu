// Tiled attention for prefill: one thread block per (head, tile of up to 16 consecutive new
// tokens of one sequence). Keys and values come through shared memory 32 at a time and serve
// all 16 queries, so each is read once per tile instead of once per token; each warp keeps
// 4 query rows' online-softmax state and accumulators in registers (lanes own dims lane,
// lane + 32, ...). head_dim <= 128; the per-token kernel handles the rest.
#include "attention/paged_attention.h"
#include "common.cuh"

#include <algorithm>

namespace cserve::cuda {

namespace {

constexpr int kQueries = 16, kKeys = 32, kDim = 128, kThreads = 128;
constexpr int kRowsPerWarp = kQueries / (kThreads / 32);
constexpr int kDimsPerLane = kDim / 32;

template <class A, class C>
__global__ void prefill_tile_kernel(PagedAttentionArgs a, int64_t tile0) {
  __shared__ float qs[kQueries][kDim];
  __shared__ float ks[kKeys][kDim + 1];  // padded: lanes read different keys of one dim
  __shared__ float vs[kKeys][kDim];
  __shared__ float ps[kQueries][kKeys];
  const int64_t h = blockIdx.x, tile = tile0 + blockIdx.y, d = a.head_dim;
  const int32_t t0 = a.tiles[3 * tile], nq = a.tiles[3 * tile + 1], seq = a.tiles[3 * tile + 2];
  const int64_t kvh = h / (a.num_heads / a.num_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const A* q = static_cast<const A*>(a.q);
  for (int64_t idx = threadIdx.x; idx < kQueries * kDim; idx += blockDim.x) {
    const int64_t r = idx / kDim, i = idx % kDim;
    qs[r][i] = (r < nq && i < d) ? to_f32(q[(t0 + r) * a.ldq + h * d + i]) * a.scale : 0.0f;
  }
  // Keys any query of the tile sees: from the first query's window start to the last's position.
  const int64_t pos_first = a.positions[t0], pos_last = a.positions[t0 + nq - 1];
  const int64_t lo = a.sliding_window > 0 ? ::max(int64_t{0}, pos_first - a.sliding_window + 1) : 0;
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
  const C* kc = static_cast<const C*>(a.k_cache);
  const C* vc = static_cast<const C*>(a.v_cache);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
  int64_t row_pos[kRowsPerWarp];
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int r = warp * kRowsPerWarp + j;
    m[j] = -INFINITY;
    l[j] = 0.0f;
    row_pos[j] = r < nq ? a.positions[t0 + r] : -1;
    for (int c = 0; c < kDimsPerLane; ++c) acc[j][c] = 0.0f;
  }
  for (int64_t kb = lo; kb <= pos_last; kb += kKeys) {
    const int n = static_cast<int>(::min(static_cast<int64_t>(kKeys), pos_last + 1 - kb));
    __syncthreads();  // the previous tile's keys and probabilities are no longer read
    for (int64_t idx = threadIdx.x; idx < kKeys * kDim; idx += blockDim.x) {
      const int64_t kj = idx / kDim, i = idx % kDim;
      float kv = 0.0f, vv = 0.0f;
      if (kj < n && i < d) {
        const int64_t p = kb + kj;
        const int64_t row = ((static_cast<int64_t>(table[p / a.block_size]) * a.num_kv_heads + kvh) * a.block_size +
                             p % a.block_size) * d;
        kv = to_f32(kc[row + i]);
        vv = to_f32(vc[row + i]);
      }
      ks[kj][i] = kv;
      vs[kj][i] = vv;
    }
    __syncthreads();
    const int64_t key_pos = kb + lane;  // each lane scores one key
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int r = warp * kRowsPerWarp + j;
      const int64_t p = row_pos[j];
      const int64_t first = a.sliding_window > 0 ? ::max(int64_t{0}, p - a.sliding_window + 1) : 0;
      const bool valid = p >= 0 && lane < n && key_pos <= p && key_pos >= first;
      float s = -INFINITY;
      if (valid) {
        s = 0.0f;
        for (int i = 0; i < d; ++i) s += qs[r][i] * ks[lane][i];
        if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
      }
      const float m_new = fmaxf(m[j], warp_max(s));
      const float prob = valid ? __expf(s - m_new) : 0.0f;
      const float alpha = m[j] == -INFINITY ? 0.0f : __expf(m[j] - m_new);
      l[j] = l[j] * alpha + warp_sum(prob);
      for (int c = 0; c < kDimsPerLane; ++c) acc[j][c] *= alpha;
      m[j] = m_new;
      ps[r][lane] = prob;
    }
    __syncwarp();
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const float pk = ps[warp * kRowsPerWarp + j][k];
        for (int c = 0; c < kDimsPerLane; ++c) acc[j][c] += pk * vs[k][lane + 32 * c];
      }
  }
  A* out = static_cast<A*>(a.out);
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int r = warp * kRowsPerWarp + j;
    if (r >= nq) continue;
    float keep = 1.0f, total = l[j];
    if (a.sinks) {  // the sink joins the denominator: rescale to the larger of the two maxima
      const float m_sink = fmaxf(m[j], a.sinks[h]);
      keep = l[j] > 0.0f ? __expf(m[j] - m_sink) : 0.0f;
      total = l[j] * keep + __expf(a.sinks[h] - m_sink);
    }
    const float inv = total > 0.0f ? keep / total : 0.0f;
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t i = lane + 32 * c;
      if (i < d) out[(t0 + r) * a.num_heads * d + h * d + i] = from_f32<A>(acc[j][c] * inv);
    }
  }
}

}  // namespace

bool prefill_tiles_apply(const PagedAttentionArgs& a) { return a.tiles != nullptr && a.num_tiles > 0 && a.head_dim <= kDim; }

void invokePrefillAttention(const PagedAttentionArgs& a, cudaStream_t stream) {
  for (int64_t t0 = 0; t0 < a.num_tiles; t0 += 65535) {
    const dim3 grid(static_cast<unsigned>(a.num_heads), static_cast<unsigned>(std::min<int64_t>(65535, a.num_tiles - t0)));
    CSERVE_DISPATCH_DTYPE(a.act_dtype, A, CSERVE_DISPATCH_CACHE_DTYPE(a.cache_dtype, C,
        prefill_tile_kernel<A, C><<<grid, kThreads, 0, stream>>>(a, t0)));
  }
  check(cudaGetLastError(), "prefill_attention");
}

}  // namespace cserve::cuda
