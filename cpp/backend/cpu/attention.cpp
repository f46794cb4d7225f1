// Paged attention on the CPU with an online (streaming) softmax in f32.
//
// Work unit: (sequence, kv head, chunk of the sequence's new tokens, key part).
// The unit's rows are all query heads of the kv head's GQA group for every token
// of the chunk, so each K/V block is read and converted once per unit. When
// there are few units (decode of a few long sequences) the key range is split
// into parts whose partial softmax states are merged at the end.
#include <xmmintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/attention_amx.h"
#include "backend/cpu/gemm_internal.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/row_ops.h"
#include "cserve/error.h"
#include "util/first_largest.h"
#include "util/vector_clones.h"

namespace cserve::cpu {

namespace {

constexpr int64_t kMaxRowsPerUnit = 64;  // query rows (tokens x group heads) per unit
// On AMX tiles (bf16 cache): units of up to this many rows, and at least this many tokens.
constexpr int64_t kMaxRowsPerAmxUnit = 128;
constexpr int64_t kMinTokensPerAmxUnit = 16;
constexpr int64_t kMinKeysPerPart = 64;

struct Shape {
  int64_t num_heads, kv_heads, group, dim, block_size, num_blocks;
  int64_t ldq;
  float scale;
  int64_t window;
  float softcap;  // 0: none
};

struct Unit {
  int32_t seq, kv_head, tok_begin, tok_end;  // tokens in the flat batch
};

// Output of one unit for one key part: per row its running max, sum and
// unnormalized accumulator.
struct Partial {
  float* m;    // [rows]
  float* l;    // [rows]
  float* acc;  // [rows][dim]
};

// Whether a sequence reads a block that another's new tokens go to: prefix caching can hand a
// request the blocks another one fills in the same step, and padded graph batches point every
// padding token at one block.
bool new_rows_shared(const AttentionMetadata& meta) {
  thread_local std::vector<std::pair<int64_t, int32_t>> written;  // (block, sequence)
  written.clear();
  for (int32_t i = 0; i < meta.num_seqs; ++i) {
    for (int32_t t = meta.query_start[i]; t < meta.query_start[i + 1]; ++t) {
      const std::pair<int64_t, int32_t> e{meta.slot_mapping[t] / meta.block_size, i};
      if (written.empty() || written.back() != e) written.push_back(e);
    }
  }
  std::sort(written.begin(), written.end());
  for (int32_t i = 0; i < meta.num_seqs; ++i) {
    const int32_t* row = meta.block_tables.data() + int64_t{i} * meta.max_blocks_per_seq;
    for (int64_t j = 0; j * meta.block_size < meta.seq_lens[i]; ++j) {
      auto it = std::lower_bound(written.begin(), written.end(), std::pair<int64_t, int32_t>{row[j], -1});
      for (; it != written.end() && it->first == row[j]; ++it)
        if (it->second != i) return true;
    }
  }
  return false;
}

void validate(const AttentionMetadata& meta, const Shape& s, const KVLayer& cache) {
  if (cache.k.shape.size() != 4 || cache.k.shape != cache.v.shape) {
    throw InvalidArgument("paged_attention: k and v must be [num_blocks][num_kv_heads][block_size][head_dim]");
  }
  if (s.num_heads <= 0 || s.num_heads % s.kv_heads != 0) {
    throw InvalidArgument("paged_attention: num_heads " + std::to_string(s.num_heads) +
                          " is not a multiple of num_kv_heads " + std::to_string(s.kv_heads));
  }
  if (meta.block_size != s.block_size) {
    throw InvalidArgument("paged_attention: metadata block_size " + std::to_string(meta.block_size) +
                          " != cache block_size " + std::to_string(s.block_size));
  }
  if (s.window < 0) throw InvalidArgument("paged_attention: negative sliding_window");
  if (s.ldq < s.num_heads * s.dim) throw InvalidArgument("paged_attention: ldq < num_heads * head_dim");
  const size_t ns = static_cast<size_t>(meta.num_seqs);
  if (meta.num_seqs < 0 || meta.query_start.size() != ns + 1 || meta.seq_lens.size() != ns ||
      meta.block_tables.size() < ns * static_cast<size_t>(meta.max_blocks_per_seq) ||
      meta.positions.size() < static_cast<size_t>(meta.num_tokens) ||
      (ns > 0 && (meta.query_start[0] != 0 || meta.query_start[ns] != meta.num_tokens))) {
    throw InvalidArgument("paged_attention: inconsistent attention metadata sizes");
  }
  for (size_t i = 0; i < ns; ++i) {
    const int64_t len = meta.seq_lens[i];
    if (len > static_cast<int64_t>(meta.max_blocks_per_seq) * s.block_size) {
      throw InvalidArgument("paged_attention: seq_len exceeds its block table");
    }
    if (meta.query_start[i] > meta.query_start[i + 1]) {
      throw InvalidArgument("paged_attention: query_start is not increasing");
    }
    for (int32_t t = meta.query_start[i]; t < meta.query_start[i + 1]; ++t) {
      if (meta.positions[t] < 0 || meta.positions[t] >= len) {
        throw InvalidArgument("paged_attention: position " + std::to_string(meta.positions[t]) +
                              " outside sequence of length " + std::to_string(len));
      }
    }
    const int64_t used_blocks = (len + s.block_size - 1) / s.block_size;
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int32_t id = meta.block_tables[i * meta.max_blocks_per_seq + b];
      if (id < 0 || id >= s.num_blocks) {
        throw InvalidArgument("paged_attention: block id " + std::to_string(id) + " out of range");
      }
    }
  }
}

// Keys are processed in chunks of whole blocks (about 128 keys) so the per-chunk softmax
// bookkeeping is amortized even with small blocks.
inline int64_t blocks_per_chunk(const Shape& s) { return std::max<int64_t>(1, 128 / s.block_size); }

// The end of the block holding key p, at most hi.
inline int64_t block_end(const Shape& s, int64_t p, int64_t hi) {
  return std::min(hi, (p / s.block_size + 1) * s.block_size);
}

// The end of the chunk that starts at key p, at most hi.
inline int64_t chunk_end(const Shape& s, int64_t p, int64_t hi) {
  return std::min(hi, (p / s.block_size + blocks_per_chunk(s)) * s.block_size);
}

// A unit's sequence's row of the block tables.
inline const int32_t* block_table(const AttentionMetadata& meta, const Unit& u) {
  return meta.block_tables.data() + static_cast<int64_t>(u.seq) * meta.max_blocks_per_seq;
}

// The row of the cache holding key p of a unit's sequence for its kv head.
inline int64_t cache_row(const Shape& s, const int32_t* table, const Unit& u, int64_t p) {
  const int64_t b = p / s.block_size;
  return (static_cast<int64_t>(table[b]) * s.kv_heads + u.kv_head) * s.block_size + (p - b * s.block_size);
}

// The cache lines of the K and V rows of keys [p_lo, p_hi) of a unit's sequence and kv head,
// asked for a few at a time between pieces of work: blocks are scattered, so the hardware
// prefetcher cannot guess them, and asking for all at once would stall the thread once its
// line fill buffers are full instead of letting it compute meanwhile. Into L2 (T1): measured
// faster than into L1 at 128 to 1024 keys (benchmarks/cpu_probes/decode_attention.cpp).
class KeyPrefetch {
 public:
  void plan(const KVLayer& cache, const AttentionMetadata& meta, const Shape& s, const Unit& u, int64_t p_lo,
            int64_t p_hi) {
    n_ = next_ = 0;
    extend(cache, meta, s, u, p_lo, p_hi);
  }
  // Adds keys [p_lo, p_hi) to the plan.
  void extend(const KVLayer& cache, const AttentionMetadata& meta, const Shape& s, const Unit& u, int64_t p_lo,
              int64_t p_hi) {
    const int64_t dim = s.dim;
    const int64_t ek = static_cast<int64_t>(dtype_size(cache.k.dtype));
    const int64_t ev = static_cast<int64_t>(dtype_size(cache.v.dtype));
    const int32_t* table = block_table(meta, u);
    for (int64_t p = p_lo; p < p_hi && n_ + 2 <= kMaxSegments;) {
      const int64_t end = block_end(s, p, p_hi);
      const int64_t row0 = cache_row(s, table, u, p);
      add(static_cast<const char*>(cache.k.data) + row0 * dim * ek, (end - p) * dim * ek);
      add(static_cast<const char*>(cache.v.data) + row0 * dim * ev, (end - p) * dim * ev);
      p = end;
    }
  }
  // Asks for the next `lines` cache lines of the plan.
  void issue(int64_t lines) {
    for (; lines > 0 && next_ < n_; ++next_) {
      Segment& g = seg_[next_];
      for (; lines > 0 && g.begin < g.end; g.begin += 64, --lines) _mm_prefetch(g.begin, _MM_HINT_T1);
      if (g.begin < g.end) return;
    }
  }
  void issue_all() { issue(std::numeric_limits<int64_t>::max()); }
  // Adds what is left of other's plan to this one.
  void extend(const KeyPrefetch& other) {
    for (int64_t i = other.next_; i < other.n_ && n_ < kMaxSegments; ++i) seg_[n_++] = other.seg_[i];
  }
  int64_t lines_left() const {
    int64_t n = 0;
    for (int64_t i = next_; i < n_; ++i) n += (seg_[i].end - seg_[i].begin + 63) / 64;
    return n;
  }

 private:
  static constexpr int64_t kMaxSegments = 64;
  struct Segment {
    const char* begin;
    const char* end;
  };
  void add(const char* p, int64_t bytes) { seg_[n_++] = {p, p + bytes}; }
  Segment seg_[kMaxSegments];
  int64_t n_ = 0, next_ = 0;
};

// Key positions a token at `pos` attends to: [lo, hi).
inline void key_range(int64_t pos, int64_t window, int64_t& lo, int64_t& hi) {
  hi = pos + 1;
  lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
}

// dst[i] = src[i] * f: a unit's scaled queries and its finished rows, AVX-512 wide where the CPU
// has it (this file is built for any x86-64: its own loops are 4 wide).
CSERVE_VECTOR_CLONES void scaled_copy(const float* src, float f, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * f;
}

// A unit's start: each token's key range clipped to the part into rng[ntok][2], its query rows
// scaled into qs[rows][dim], and an empty softmax state (max and sum; not the accumulator).
void start_unit(const Unit& u, int64_t part_lo, int64_t part_hi, const float* q, const AttentionMetadata& meta,
                const Shape& s, int32_t* rng, float* qs, Partial out) {
  const int64_t ntok = u.tok_end - u.tok_begin, width = s.group * s.dim;
  for (int64_t t = 0; t < ntok; ++t) {
    int64_t lo, hi;
    key_range(meta.positions[u.tok_begin + t], s.window, lo, hi);
    rng[2 * t] = static_cast<int32_t>(std::max(lo, part_lo));
    rng[2 * t + 1] = static_cast<int32_t>(std::min(hi, part_hi));
    scaled_copy(q + (u.tok_begin + t) * s.ldq + u.kv_head * width, s.scale, qs + t * width, width);
  }
  std::fill(out.m, out.m + ntok * s.group, -std::numeric_limits<float>::infinity());
  std::fill(out.l, out.l + ntok * s.group, 0.0f);
}

// Folds a row's scores p[jl, jh) of a chunk into its running softmax state (max m, sum l,
// unnormalized accumulator acc[dim]): leaves p[0, width) holding exp(score - m) in [jl, jh) and 0
// elsewhere, ready to be multiplied by the chunk's values. Nothing to fold when jh <= jl.
inline void fold_row(float* p, int64_t jl, int64_t jh, int64_t width, const Shape& s, const detail::RowOps& ops,
                     float& m, float& l, float* acc) {
  if (jh <= jl) {
    std::fill(p, p + width, 0.0f);
    return;
  }
  if (s.softcap > 0) ops.softcap(p + jl, jh - jl, s.softcap);
  const float m_new = std::max(m, max_skipping_nan(p + jl, jh - jl));
  if (m == -std::numeric_limits<float>::infinity()) {
    m = m_new;  // the row's first scores: l and acc are still 0, nothing to rescale
  } else if (m != m_new) {
    const float alpha = std::exp(m - m_new);
    l *= alpha;
    for (int64_t d = 0; d < s.dim; ++d) acc[d] *= alpha;
    m = m_new;
  }
  l += ops.exp_shift_sum(p + jl, jh - jl, m_new);
  std::fill(p, p + jl, 0.0f);
  std::fill(p + jh, p + width, 0.0f);
}

// Runs one unit over keys [part_lo, part_hi) and leaves its softmax state in `out`. Its first
// chunk was asked for before; each chunk asks for the next one's lines while it computes, and
// the last asks for `following` (the first chunk of this thread's next unit).
void run_unit(const Unit& u, int64_t part_lo, int64_t part_hi, const float* q, const KVLayer& cache,
              const AttentionMetadata& meta, const Shape& s, const detail::RowOps& ops, Partial out,
              KeyPrefetch& following) {
  const int64_t ntok = u.tok_end - u.tok_begin, rows = ntok * s.group, dim = s.dim, bs = s.block_size;
  const int64_t chunk = blocks_per_chunk(s) * bs;
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(rows * dim + rows * chunk + 2 * chunk * dim + 2 * rows);
  if (scratch.size() < need) scratch.resize(need);
  float* qs = scratch.data();      // [rows][dim], pre-scaled
  float* sc = qs + rows * dim;     // [rows][chunk]
  float* kf = sc + rows * chunk;   // [chunk][dim]
  float* vf = kf + chunk * dim;    // [chunk][dim]
  // Per token: its key range clipped to the part, as int32 pairs (2 * rows floats of room).
  int32_t* rng = reinterpret_cast<int32_t*>(vf + chunk * dim);  // [ntok][2]
  start_unit(u, part_lo, part_hi, q, meta, s, rng, qs, out);
  std::fill(out.acc, out.acc + rows * dim, 0.0f);

  const size_t ek = dtype_size(cache.k.dtype), ev = dtype_size(cache.v.dtype);
  const int32_t* table = block_table(meta, u);
  // Converts rows [c_lo, c_hi) of K or V, gathered from their blocks, into dst.
  auto gather = [&](const Tensor& src, size_t elem, int64_t c_lo, int64_t c_hi, float* dst) {
    for (int64_t p = c_lo; p < c_hi;) {
      const int64_t end = block_end(s, p, c_hi);
      ops.to_f32(static_cast<const char*>(src.data) + cache_row(s, table, u, p) * dim * elem, src.dtype,
                 dst + (p - c_lo) * dim, (end - p) * dim);
      p = end;
    }
  };
  // Each chunk asks for the next one's lines, spread over its pieces of work (a qk per row and
  // block, a pv per block); the first chunk of the thread's next unit is asked for with the
  // unit's last chunk, or from the chunk before it on, spread over both: a short last chunk had
  // it all to ask for in a few pieces (decode_attention 16 164 16, alternating in one process:
  // 1.76-2.03 -> 1.54-1.62 ms; 16 x 140 keys 1.97 -> 1.48; FLUSH=16 2.20 -> 1.76).
  auto blocks_of = [&](int64_t lo, int64_t hi) { return (hi - 1) / bs - lo / bs + 1; };  // keys [lo, hi)
  KeyPrefetch ahead;
  for (int64_t c_lo = part_lo; c_lo < part_hi;) {
    const int64_t c_hi = chunk_end(s, c_lo, part_hi);
    const int64_t nk = c_hi - c_lo;
    const int64_t blocks = blocks_of(c_lo, c_hi);
    int64_t pieces = (rows + 1) * blocks;
    KeyPrefetch* next = &following;
    bool rolls_over = false;  // the plan goes on over the next chunk
    if (c_hi < part_hi) {
      const int64_t n_hi = chunk_end(s, c_hi, part_hi);
      ahead.plan(cache, meta, s, u, c_hi, n_hi);
      if (n_hi >= part_hi) {
        ahead.extend(following);
        pieces += (rows + 1) * blocks_of(c_hi, n_hi);
        rolls_over = true;
      }
      next = &ahead;
    } else if (c_lo > part_lo) {
      next = &ahead;  // what the chunk before left of its plan
    }
    const int64_t pace = (next->lines_left() + pieces - 1) / pieces;
    // Scores for keys [a, b) of the chunk against query row r: from the f32 copy,
    // or straight from the cache's blocks where the ISA converts in registers.
    const bool direct = ops.qk_kv != nullptr && ops.pv_kv != nullptr;
    if (!direct) gather(cache.k, ek, c_lo, c_hi, kf);
    auto scores = [&](const float* qr, int64_t a, int64_t b, float* out_row) {
      if (!direct) {
        next->issue(pace * blocks);
        ops.qk(qr, kf + a * dim, b - a, dim, out_row + a);
        return;
      }
      for (int64_t p = c_lo + a; p < c_lo + b;) {
        const int64_t end = block_end(s, p, c_lo + b);
        next->issue(pace);
        ops.qk_kv(qr, static_cast<const char*>(cache.k.data) + cache_row(s, table, u, p) * dim * ek, cache.k.dtype,
                  end - p, dim, out_row + (p - c_lo));
        p = end;
      }
    };
    bool any = false;
    for (int64_t t = 0; t < ntok; ++t) {
      const int64_t jl = std::max<int64_t>(rng[2 * t] - c_lo, 0);
      const int64_t jh = std::min<int64_t>(rng[2 * t + 1] - c_lo, nk);
      for (int64_t g = 0; g < s.group; ++g) {
        const int64_t r = t * s.group + g;
        float* p = sc + r * nk;
        if (jh > jl) {
          any = true;
          scores(qs + r * dim, jl, jh, p);
        }
        fold_row(p, jl, jh, nk, s, ops, out.m[r], out.l[r], out.acc + r * dim);
      }
    }
    if (any && !direct) {
      gather(cache.v, ev, c_lo, c_hi, vf);
      next->issue(pace * blocks);
      ops.pv(out.acc, rows, dim, sc, nk, vf, nk, dim);
    } else if (any) {
      for (int64_t p = c_lo; p < c_hi;) {
        const int64_t end = block_end(s, p, c_hi);
        next->issue(pace);
        ops.pv_kv(out.acc, rows, dim, sc + (p - c_lo), nk,
                  static_cast<const char*>(cache.v.data) + cache_row(s, table, u, p) * dim * ev, cache.v.dtype,
                  end - p, dim);
        p = end;
      }
    }
    if (!rolls_over) next->issue_all();
    c_lo = c_hi;
  }
}

// Scores of one row tile of queries (packed) against a chunk's nk keys (rows[j]) into s[r][j],
// four groups of 16 keys at a time: a group whose 16 rows follow each other in one block is read
// where it is, the rest copied (zeros past nk). The next chunk's lines are asked for a few at a
// time between the groups (see KeyPrefetch).
void score_in_place(const uint16_t* const* rows, int64_t nk, const uint16_t* q_packed, int64_t q_rows, int64_t dim,
                    uint16_t* copies, KeyPrefetch& next, float* s, int64_t lds) {
  const int64_t groups = (nk + 15) / 16, pace = (next.lines_left() + groups) / (groups + 1);
  const uint16_t* group_keys[4];
  int64_t n = 0;
  for (int64_t j0 = 0; j0 < nk; j0 += 16) {
    next.issue(pace);
    const uint16_t* k = rows[j0];
    bool together = j0 + 16 <= nk;
    for (int64_t i = 1; together && i < 16; ++i) together = rows[j0 + i] == k + i * dim;
    if (!together) {
      uint16_t* copy = copies + 16 * dim * n;
      for (int64_t i = 0; i < 16; ++i) {
        if (j0 + i < nk) std::copy(rows[j0 + i], rows[j0 + i] + dim, copy + i * dim);
        else std::fill(copy + i * dim, copy + (i + 1) * dim, uint16_t{0});
      }
      k = copy;
    }
    group_keys[n++] = k;
    if (n == 4 || j0 + 16 >= nk) {
      detail::amx_scores_in_place(q_packed, q_rows, dim, group_keys, n, dim, s + j0 + 16 - 16 * n, lds);
      n = 0;
    }
  }
}

// run_unit on AMX tiles (configured by the caller), for a bf16 cache (dim a multiple of 32). Per
// chunk, all query rows are scored in one pass, folded row by row as in run_unit, and their
// probabilities (rounded to bf16, as torch's and vLLM's CPU flash attention round them) multiply
// the values, re-laid for the tiles once, in a second pass. More than one row tile of queries
// (prefill) score against keys re-laid for the tiles; one row tile (a decode step's GQA group,
// a token and its drafts) against the keys where they are, 16 at a time, which gives the same
// sums in the same order. A row's result depends on its own query and the keys only: a token
// gets the same bits in a cold prefill, in verification, or alone after a prefix-cache hit.
void run_unit_amx(const Unit& u, int64_t part_lo, int64_t part_hi, const float* q, const KVLayer& cache,
                  const AttentionMetadata& meta, const Shape& s, const detail::RowOps& ops, Partial out,
                  KeyPrefetch& following) {
  const int64_t ntok = u.tok_end - u.tok_begin, rows = ntok * s.group, dim = s.dim;
  const int64_t row_tiles = (rows + 15) / 16, rows_p = row_tiles * 16;
  const int64_t chunk_p = (blocks_per_chunk(s) * s.block_size + 31) / 32 * 32;
  const bool in_place = row_tiles == 1;
  thread_local std::vector<float> f32s;
  thread_local std::vector<uint16_t> bf16s;
  thread_local std::vector<const uint16_t*> key_rows, value_rows;
  // Every part below is a multiple of 64 bytes long: the tiles start on whole lines.
  float* qs = aligned_scratch(f32s, static_cast<size_t>(2 * rows_p * dim + rows_p * chunk_p + 2 * ntok));
  // Rows past `rows` (to fill the last tile) are never read back: they take whatever the scratch
  // holds and meet only each other's (a tile's row r of results comes from its row r alone).
  float* o = qs + rows_p * dim;   // qs: [rows_p][dim], pre-scaled; o: the same shape, the
  float* sc = o + rows_p * dim;   // unnormalized accumulator; sc: [rows_p][width], scores,
  int32_t* rng = reinterpret_cast<int32_t*>(sc + rows_p * chunk_p);  // then probabilities
  uint16_t* qb = aligned_scratch(bf16s, static_cast<size_t>((rows_p + 2 * chunk_p + 80) * dim + rows_p * chunk_p));
  uint16_t* kb = qb + rows_p * dim;   // qb: qs in bf16; kb: the chunk's keys, packed
  uint16_t* vb = kb + chunk_p * dim;  // its values, packed
  uint16_t* pb = vb + chunk_p * dim;  // sc in bf16
  uint16_t* q_packed = pb + rows_p * chunk_p;  // in place: qb packed as B tiles (16 x dim), and
  uint16_t* key_copy = q_packed + 16 * dim;    // up to 4 groups of 16 keys copied (64 x dim)
  if (key_rows.size() < static_cast<size_t>(chunk_p)) {
    key_rows.resize(chunk_p);
    value_rows.resize(chunk_p);
  }
  start_unit(u, part_lo, part_hi, q, meta, s, rng, qs, out);
  std::fill(o, o + rows * dim, 0.0f);
  detail::convert_rows_bf16_avx512bf16(qs, rows, dim, dim, dim, qb, dim);
  if (in_place) {
    for (int64_t r = 0; r < rows; ++r) key_rows[r] = qb + r * dim;
    detail::amx_pack_keys(key_rows.data(), rows, 1, dim, q_packed);
  }

  const int32_t* table = block_table(meta, u);
  KeyPrefetch ahead;
  for (int64_t c_lo = part_lo; c_lo < part_hi;) {
    const int64_t c_hi = chunk_end(s, c_lo, part_hi), nk = c_hi - c_lo;
    const int64_t steps = (nk + 31) / 32, width = steps * 32;
    for (int64_t p = c_lo; p < c_hi;) {  // block by block: one division per block
      const int64_t end = block_end(s, p, c_hi);
      for (int64_t row = cache_row(s, table, u, p) * dim; p < end; ++p, row += dim) {
        key_rows[p - c_lo] = static_cast<const uint16_t*>(cache.k.data) + row;
        value_rows[p - c_lo] = static_cast<const uint16_t*>(cache.v.data) + row;
      }
    }
    KeyPrefetch* next = &following;
    if (c_hi < part_hi) {
      ahead.plan(cache, meta, s, u, c_hi, chunk_end(s, c_hi, part_hi));
      next = &ahead;
    }
    if (in_place) {
      score_in_place(key_rows.data(), nk, q_packed, rows, dim, key_copy, *next, sc, width);
    } else {
      detail::amx_pack_keys(key_rows.data(), nk, 2 * steps, dim, kb);
      next->issue_all();
      detail::amx_scores(qb, row_tiles, dim, kb, 2 * steps, sc, width);
    }
    bool any = false;
    for (int64_t t = 0; t < ntok; ++t) {
      const int64_t jl = std::max<int64_t>(rng[2 * t] - c_lo, 0);
      const int64_t jh = std::min<int64_t>(rng[2 * t + 1] - c_lo, nk);
      any = any || jh > jl;
      for (int64_t r = t * s.group; r < (t + 1) * s.group; ++r) {
        fold_row(sc + r * width, jl, jh, width, s, ops, out.m[r], out.l[r], o + r * dim);
      }
    }
    if (any) {
      detail::convert_rows_bf16_avx512bf16(sc, rows, width, width, width, pb, width);
      detail::amx_pack_values(value_rows.data(), nk, steps, dim, vb);
      detail::amx_values(pb, width, row_tiles, vb, steps, dim, o);
    }
    next->issue_all();
    c_lo = c_hi;
  }
  std::copy(o, o + rows * dim, out.acc);
}

}  // namespace

void paged_attention(const float* q, int64_t ldq, int64_t num_heads, KVLayer& cache,
                     const AttentionMetadata& meta, float scale, int64_t sliding_window,
                     float* out, ThreadPool& pool, float softcap, const float* sinks, const NewKV* new_kv) {
  Shape s;
  s.num_heads = num_heads;
  s.kv_heads = cache.k.shape.size() == 4 ? cache.k.shape[1] : 0;
  s.block_size = cache.k.shape.size() == 4 ? cache.k.shape[2] : 0;
  s.dim = cache.k.shape.size() == 4 ? cache.k.shape[3] : 0;
  s.num_blocks = cache.k.shape.size() == 4 ? cache.k.shape[0] : 0;
  s.ldq = ldq;
  s.scale = scale;
  s.window = sliding_window;
  s.softcap = softcap;
  if (!(softcap >= 0)) throw InvalidArgument("paged_attention: softcap must be 0 or positive");
  if (s.kv_heads <= 0 || s.block_size <= 0 || s.dim <= 0) {
    throw InvalidArgument("paged_attention: bad KV cache shape");
  }
  validate(meta, s, cache);
  s.group = num_heads / s.kv_heads;
  const int64_t dim = s.dim;

  // Units: chunks of each sequence's tokens, times kv heads.
  const bool amx = cpu_has_amx() && cache.k.dtype == DType::BF16 && cache.v.dtype == DType::BF16 && dim % 32 == 0;
  const int64_t tokens_per_unit = amx ? std::max<int64_t>(kMinTokensPerAmxUnit, kMaxRowsPerAmxUnit / s.group)
                                      : std::max<int64_t>(1, kMaxRowsPerUnit / s.group);
  // Scratch of the calling thread; the workers reach it through these references
  // (naming a thread_local inside the worker lambda would give the worker's own).
  thread_local std::vector<Unit> units_storage;
  std::vector<Unit>& units = units_storage;
  units.clear();
  int64_t max_keys = 0;
  for (int32_t i = 0; i < meta.num_seqs; ++i) {
    for (int32_t t0 = meta.query_start[i]; t0 < meta.query_start[i + 1]; t0 += tokens_per_unit) {
      const int32_t t1 = static_cast<int32_t>(std::min<int64_t>(t0 + tokens_per_unit, meta.query_start[i + 1]));
      for (int32_t h = 0; h < s.kv_heads; ++h) units.push_back({i, h, t0, t1});
    }
    max_keys = std::max<int64_t>(max_keys, meta.seq_lens[i]);
  }
  if (units.empty()) return;

  // Split keys into parts when there are too few units to keep the threads busy.
  const int64_t threads = pool.num_threads();
  const int64_t num_units = static_cast<int64_t>(units.size());
  int64_t parts = 1;
  if (threads > 1 && num_units < 4 * threads) {
    parts = std::min<int64_t>((4 * threads + num_units - 1) / num_units,
                              std::max<int64_t>(1, max_keys / kMinKeysPerPart));
  }
  // The step's new keys and values: where each sequence's new tokens are one unit per kv head, no
  // unit is split into key parts and no sequence reads another's new rows (decode, a token and
  // its drafts), each unit writes its own rows first, on its thread: they are the lines it reads
  // next, so the writes add no trip to memory and no serial pass (16-stream decode step: ~0.4 ms
  // of 21). Otherwise (a prefill's units read each other's rows) all are written before any unit
  // starts.
  if (new_kv && meta.slot_mapping.size() < static_cast<size_t>(meta.num_tokens))
    throw InvalidArgument("paged_attention: fewer slots than tokens");
  const bool units_write =
      new_kv && parts == 1 && num_units == int64_t{meta.num_seqs} * s.kv_heads && !new_rows_shared(meta);
  if (units_write) {
    check_kv_rows(new_kv->ld, meta.slot_mapping.data(), meta.num_tokens, cache);
  } else if (new_kv) {
    write_kv(new_kv->k, new_kv->v, meta.num_tokens, new_kv->ld, meta.slot_mapping.data(), cache, pool);
  }
  const int64_t max_rows = tokens_per_unit * s.group;
  const size_t per_partial = static_cast<size_t>(max_rows * (dim + 2));
  // Partial states of every (unit, part); only needed when parts are merged.
  thread_local std::vector<float> partials_storage;
  std::vector<float>& partials = partials_storage;
  if (parts > 1 && partials.size() < per_partial * static_cast<size_t>(num_units * parts)) {
    partials.resize(per_partial * static_cast<size_t>(num_units * parts));
  }
  auto partial_in = [&](float* base) { return Partial{base, base + max_rows, base + 2 * max_rows}; };
  auto partial_at = [&](int64_t unit, int64_t part) {
    return partial_in(partials.data() + per_partial * static_cast<size_t>(unit * parts + part));
  };

  // out[token][head][dim] for the rows of unit u, from `count` partial states.
  const int64_t ldo = num_heads * dim;
  auto finish = [&](const Unit& u, const Partial* ps, int64_t count) {
    const int64_t rows = (u.tok_end - u.tok_begin) * s.group;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = u.tok_begin + r / s.group, head = u.kv_head * s.group + r % s.group;
      float* o = out + t * ldo + head * dim;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < count; ++p) m = std::max(m, ps[p].m[r]);
      if (sinks) m = std::max(m, sinks[head]);
      if (count == 1 && !sinks) {  // one part: its state is the row's (the weight below would be 1)
        scaled_copy(ps[0].acc + r * dim, 1.0f / ps[0].l[r], o, dim);
        continue;
      }
      float l = sinks ? std::exp(sinks[head] - m) : 0.0f;
      std::fill(o, o + dim, 0.0f);
      for (int64_t p = 0; p < count; ++p) {
        if (ps[p].l[r] == 0.0f) continue;
        const float w = std::exp(ps[p].m[r] - m);
        l += ps[p].l[r] * w;
        const float* a = ps[p].acc + r * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] += w * a[d];
      }
      const float inv = 1.0f / l;  // l > 0: every token sees at least its own key
      for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  };
  auto key_bounds = [&](const Unit& u, int64_t& lo, int64_t& hi) {
    lo = std::numeric_limits<int64_t>::max();
    hi = 0;
    for (int32_t t = u.tok_begin; t < u.tok_end; ++t) {
      int64_t a, b;
      key_range(meta.positions[t], s.window, a, b);
      lo = std::min(lo, a);
      hi = std::max(hi, b);
    }
  };

  const detail::RowOps& ops = detail::row_ops();
  const int64_t num_tasks = num_units * parts;
  std::atomic<int64_t> next{0};
  auto worker = [&](int) {
    thread_local std::vector<float> own;  // this thread's partial state when parts == 1
    if (parts == 1 && own.size() < per_partial) own.resize(per_partial);
    if (amx) detail::amx_configure_tiles();
    const auto run = amx ? run_unit_amx : run_unit;
    auto part_bounds = [&](int64_t task, int64_t& plo, int64_t& phi) {
      int64_t lo, hi;
      key_bounds(units[task / parts], lo, hi);
      const int64_t part = task % parts;
      plo = lo + (hi - lo) * part / parts;
      phi = lo + (hi - lo) * (part + 1) / parts;
    };
    auto plan_first_chunk = [&](int64_t task, KeyPrefetch& pf) {
      if (task >= num_tasks) return;
      int64_t plo, phi;
      part_bounds(task, plo, phi);
      pf.plan(cache, meta, s, units[task / parts], plo, chunk_end(s, plo, phi));
    };
    // Tasks are taken `take` at a time: without key parts, a chunk of a sequence's tokens for
    // all its kv heads, whose K/V rows share the cache's pages (fewer TLB misses than when the
    // two threads interleave over the same blocks), where there are enough to go round. A lone
    // sequence's heads go one at a time (one stream of 108 keys, the caches cold as after the
    // GEMMs: decode_attention FLUSH=64 0.34 -> 0.24 ms a step, where one thread took all three).
    const int64_t take = parts == 1 && num_tasks >= threads * s.kv_heads ? s.kv_heads : 1;
    KeyPrefetch following;
    int64_t task = next.fetch_add(take), group = task;
    plan_first_chunk(task, following);
    following.issue_all();
    while (task < num_tasks) {
      // The next task's first keys load while this one computes: the next of this group, or
      // the group this thread most likely takes next (groups are taken in turn).
      plan_first_chunk(task + 1 < group + take ? task + 1 : group + take * threads, following);
      const int64_t ui = task / parts, part = task % parts;
      const Unit& u = units[ui];
      int64_t plo, phi;
      part_bounds(task, plo, phi);
      if (units_write) {
        write_kv_head(new_kv->k, new_kv->v, new_kv->ld, meta.slot_mapping.data(), u.tok_begin, u.tok_end, u.kv_head,
                      cache);
      }
      if (parts == 1) {
        const Partial p = partial_in(own.data());
        run(u, plo, phi, q, cache, meta, s, ops, p, following);
        finish(u, &p, 1);
      } else {
        run(u, plo, phi, q, cache, meta, s, ops, partial_at(ui, part), following);
      }
      if (++task == group + take) group = task = next.fetch_add(take);
    }
    if (amx) detail::amx_release_tiles();
  };
  if (num_tasks == 1) {
    worker(0);
  } else {
    pool.run_on_all(worker);
  }
  if (parts > 1) {
    std::vector<Partial> ps(static_cast<size_t>(parts));
    for (int64_t ui = 0; ui < num_units; ++ui) {
      for (int64_t p = 0; p < parts; ++p) ps[p] = partial_at(ui, p);
      finish(units[ui], ps.data(), parts);
    }
  }
}

}  // namespace cserve::cpu
