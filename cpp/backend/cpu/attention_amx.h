// Private to the CPU backend: the AMX tile steps of paged attention over a bf16 KV cache
// (attention_amx.cpp). A unit's chunk of keys and values is re-laid into AMX's B-tile layout
// once and shared by all its query rows:
//   scores S = Q K^T: A = Q (bf16 rows), B = K^T, 16 keys x one pair of dims per 64-byte row;
//   values O += P V: A = P (bf16 rows), B = V, 16 dims x one pair of keys per 64-byte row.
// One row tile of queries (decode) scores S^T = K Q^T instead, the keys read where they are.
// The caller configures the tiles (amx_configure_tiles) and keeps the softmax between the two.
#pragma once
#include <cstdint>

namespace cserve::cpu::detail {

// Keys [0, nk) of a chunk, one bf16 row of `dim` values each (dim a multiple of 32), into
// dst[nk_tiles][dim / 32][16 dim pairs][16 keys][2]; keys from nk up to nk_tiles * 16 are zeros.
void amx_pack_keys(const uint16_t* const* rows, int64_t nk, int64_t nk_tiles, int64_t dim, uint16_t* dst);
// Value rows [0, nk) into dst[nk_steps][dim / 16][16 key pairs][16 dims][2], zeros from nk up to
// nk_steps * 32.
void amx_pack_values(const uint16_t* const* rows, int64_t nk, int64_t nk_steps, int64_t dim, uint16_t* dst);
// s[r][j] = sum_d q[r][d] k[j][d] for row tiles [0, row_tiles) of q (bf16 [16 * row_tiles][dim])
// and key tiles [0, nk_tiles) (an even count) of packed keys; s has row stride lds floats.
void amx_scores(const uint16_t* q, int64_t row_tiles, int64_t dim, const uint16_t* keys, int64_t nk_tiles, float* s,
                int64_t lds);
// amx_scores for one row tile (at most 16 query rows: a decode step's GQA group) without
// re-laid keys: up to four groups of 16 keys read where they are (k[g], row stride ldk values),
// against the queries packed as amx_pack_keys packs 16 keys (q_packed). The same sums, added in
// the same order, as amx_scores gives those rows: keys x rows here, gathered into s's rows.
void amx_scores_in_place(const uint16_t* q_packed, int64_t rows, int64_t dim, const uint16_t* const* k,
                         int64_t groups, int64_t ldk, float* s, int64_t lds);
// o[r][d] += sum_j p[r][j] v[j][d] for row tiles [0, row_tiles) of p (bf16, row stride ldp, keys
// [0, 32 * nk_steps)) and packed values; o is f32 [16 * row_tiles][dim].
void amx_values(const uint16_t* p, int64_t ldp, int64_t row_tiles, const uint16_t* values, int64_t nk_steps,
                int64_t dim, float* o);

}  // namespace cserve::cpu::detail
