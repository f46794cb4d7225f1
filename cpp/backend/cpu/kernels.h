// CPU kernels as free functions. They borrow their buffers and never allocate
// on the hot path except per-thread scratch. Activations are always f32;
// weights and the KV cache are f32, f16 or bf16. The instruction set is chosen
// at run time (cpu_isa()), so one build runs on any x86-64.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/attention_metadata.h"
#include "backend/gated_activation.h"
#include "core/buffer.h"
#include "core/tensor.h"
#include "util/thread_pool.h"

namespace cserve::cpu {

enum class Isa { Scalar, Avx2, Avx512, Avx512Bf16 };

// Best ISA this CPU supports (cpuid + xgetbv). The environment variable
// CSERVE_ISA=scalar|avx2|avx2_vnni|avx512|avx512_bf16 lowers it (never raises it) for tests
// and measurements: "avx2" is plain AVX2 (+FMA, F16C), as on Zen 3, even on a CPU that has
// AVX-VNNI; "avx2_vnni" is the AVX2 level with AVX-VNNI where the CPU has it (Alder Lake,
// Sapphire Rapids, Zen 5), as such a CPU without AVX-512 runs. Unset: the best of everything.
Isa cpu_isa();
const char* isa_name(Isa isa);
// AVX512_VNNI (vpdpbusd), used by the quantized kernels when cpu_isa() is an AVX-512 level.
bool cpu_has_avx512_vnni();
// AVX-VNNI (VEX vpdpbusd on ymm, cpuid 7.1 eax bit 4), used by the AVX2 quantized kernels
// when the CPU has it, cpu_isa() is not scalar and CSERVE_ISA is not "avx2".
bool cpu_has_avx_vnni();
// Whether the CPU has AVX-VNNI at all, whatever CSERVE_ISA says (tests).
bool cpu_detects_avx_vnni();
// AMX-BF16 tiles (Sapphire Rapids and later), used by the bf16 GEMM for several rows when
// cpu_isa() is avx512_bf16, CSERVE_ISA is unset or "amx" ("avx512_bf16" keeps the vdpbf16ps
// kernels), and Linux grants the process the tile state.
bool cpu_has_amx();
// Whether the CPU has AMX-BF16 at all, whatever CSERVE_ISA says (tests).
bool cpu_detects_amx();

// A weight matrix W[n][k] (y = x W^T + bias) repacked at load into the layout
// the GEMM kernels stream through: panels of 16 output rows. bf16 uses the
// "VNNI" pair layout [n/16][k/2][16][2] so AVX512_BF16 vdpbf16ps reads it
// directly; f32 and f16 use [n/16][k][16]. n and k are zero-padded.
struct PackedMatrix {
  DType dtype = DType::F32;
  int64_t n = 0, k = 0;
  int64_t n_padded = 0, k_padded = 0;
  Buffer data;
  std::vector<float> bias;  // empty or n values
};

// Packs the row-wise concatenation of `parts` (each [n_i][k], any of f32/f16/bf16,
// converted to `dtype`) with optional biases (empty vector, or one per part; a part
// without bias has data == nullptr). Throws InvalidArgument if the k differ.
PackedMatrix pack_matrix(const std::vector<Tensor>& parts, const std::vector<Tensor>& biases,
                         DType dtype);

// y[m][n] (= or +=) x[m][k] * W^T + bias, for m rows with leading dims ldx, ldy.
// Each weight byte is read from memory once per call whatever m is (panels
// stay in cache while all rows of x pass over them). Bias is added when present
// (also in accumulate mode).
void gemm(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
          bool accumulate, ThreadPool& pool);

// out[m][n / 2] = act(g) * u for [g | u] = x W^T + bias with W's first n / 2 rows the gate: an
// MLP's gate_up projection and its activation in one pass, the n-wide product never stored (it is
// the largest result of a prefill). Equal to gemm, then silu_mul / gelu_tanh_mul. Returns false,
// computing nothing, where there is no fused kernel for w (it needs bf16 weights on an AVX512_BF16
// CPU, AMX or not, and n / 2 a multiple of 16): the caller runs those two.
bool gemm_gated(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, GatedActivation act, float* out,
                int64_t ldo, ThreadPool& pool);

// out[m][down.n] (= or +=) gemm_gated(gate_up, x) times down: a gated MLP, the activation handed
// from the first GEMM to the second as the bf16 rows or tiles the second reads (never stored as
// floats, never converted on one thread between them). Equal to gemm_gated, then gemm. Returns
// false, computing nothing, where there is no such kernel (gemm_gated's, the same kernel for
// down, down.k = n / 2; a multiple of 32 for AMX).
bool gemm_mlp(const PackedMatrix& gate_up, const PackedMatrix& down, const float* x, int64_t m, int64_t ldx,
              GatedActivation act, float* out, int64_t ldo, bool accumulate, ThreadPool& pool);

// Rows per parallel chunk of a row-wise kernel, so that a chunk holds at least ~16K values.
inline int64_t row_grain(int64_t row_len) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_len)); }

// At least n values of scratch in v, starting on a 64-byte line: a misaligned 64-byte row (an AMX
// tile row, a vector) would touch two lines.
template <class T>
T* aligned_scratch(std::vector<T>& v, size_t n) {
  constexpr size_t kSlack = 64 / sizeof(T);
  if (v.size() < n + kSlack) v.resize(n + kSlack);
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}

// Whether the vector GEMMs (gemm's AMX kernel, qgemm's AVX-512 and AVX2 kernels) store an m x n
// float result past the caches: one of 16 MiB or more (a quantized prefill's gate_up) cannot
// stay in the caches for its reader, so it is written once instead of read for ownership and
// then written back (at 4 MiB: bf16 prefill of 16 x 100 tokens 689 -> 619 ms, GGUF 1.13 ->
// 1.05 s). A smaller one is read back from the caches (the qkv of 16 x 100 tokens, 6 MB, by the
// rotary embedding and attention right after: prefill 0.294-0.298 -> 0.281-0.292 s, GGUF 0.77-0.79
// -> 0.76-0.77 s against 4 MiB; never streamed, GGUF 0.80 s). Accumulating results are read
// anyway and stay on the usual path.
inline bool stream_result(int64_t m, int64_t n, bool accumulate) {
  constexpr int64_t kStreamBytes = int64_t{16} << 20;
  return !accumulate && m * n * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
}

// out[i][:] = row ids[i] of W as f32 (the embedding lookup for tied embeddings).
void gather_rows(const PackedMatrix& w, const int32_t* ids, int64_t num_ids, float* out);

// out[i][:] = row ids[i] of a plain [rows][dim] table (f32/f16/bf16) as f32.
void embedding(const Tensor& table, const int32_t* ids, int64_t num_ids, float* out);

// RMSNorm over rows of length dim: out = x / sqrt(mean(x^2) + eps) * w.
// x and out may alias. Row stride is ld for both.
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, int64_t ld, float eps,
              float* out, ThreadPool& pool);

// residual += x / sqrt(mean(x^2) + eps) * w, row by row (stride ld for both).
void rms_norm_add(const float* x, const float* w, int64_t rows, int64_t dim, int64_t ld, float eps,
                  float* residual, ThreadPool& pool);

// out[t][i] = silu(gu[t][i]) * gu[t][inter + i] for i < inter.
void silu_mul(const float* gu, int64_t tokens, int64_t inter, float* out, ThreadPool& pool);
// The same with GELU's tanh approximation (gelu_pytorch_tanh) for silu.
void gelu_tanh_mul(const float* gu, int64_t tokens, int64_t inter, float* out, ThreadPool& pool);
// out[i][:] (= or +=) sum_j weights[i * k + j] * src[rows[i * k + j]][:], rows of `cols`.
void combine_rows(const float* src, const int32_t* rows, const float* weights, int64_t n, int64_t k, int64_t cols,
                  float* out, bool accumulate, ThreadPool& pool);
// gpt-oss: out[t][i] = (clamp(u, -limit, limit) + 1) * g * sigmoid(alpha g), g = min(gate, limit).
void clamped_swiglu_mul(const float* gu, int64_t tokens, int64_t inter, float alpha, float limit, float* out,
                        ThreadPool& pool);
// x[i] = cap * tanh(x[i] / cap) for i < n.
void softcap(float* x, int64_t n, float cap, ThreadPool& pool);

// Rotates the first rotary_dim dims of each head in place, rotate-half (GPT-NeoX /
// HF Llama) style: x1 = x[:r/2], x2 = x[r/2:r]; x1' = x1*c - x2*s; x2' = x2*c + x1*s.
// x: [tokens][heads][head_dim] with token stride ld (floats). cos/sin: [tokens][rotary_dim/2].
void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld,
          const float* cos, const float* sin, int64_t rotary_dim, ThreadPool& pool);

// One layer's KV cache (see attention_metadata.h).
using KVLayer = KVCacheLayer;

// Writes k[t], v[t] ([tokens][num_kv_heads][head_dim] rows with token stride ld) into
// slot_mapping[t] = block * block_size + offset. Throws (writing nothing) when a slot is out of
// the cache.
void write_kv(const float* k, const float* v, int64_t tokens, int64_t ld, const int64_t* slot_mapping,
              KVLayer& cache, ThreadPool& pool);
// write_kv's checks alone: throws unless the rows' stride holds every kv head and every slot is in
// the cache.
void check_kv_rows(int64_t ld, const int64_t* slot_mapping, int64_t tokens, const KVLayer& cache);
// Head h of tokens [t0, t1) into their slots, on the calling thread (slots checked already).
void write_kv_head(const float* k, const float* v, int64_t ld, const int64_t* slot_mapping, int64_t t0, int64_t t1,
                   int64_t h, KVLayer& cache);

// A step's new keys and values, for paged_attention to write: [tokens][num_kv_heads][head_dim]
// rows with token stride ld, going to meta.slot_mapping.
struct NewKV {
  const float* k;
  const float* v;
  int64_t ld;
};

// Attention of each new token over its sequence's cached tokens (which include the new ones:
// written by write_kv before, or passed as new_kv and written here): token j of sequence i at
// position p attends to
// cached positions [max(0, p - sliding_window + 1) .. p] (sliding_window 0 = no window).
// q: [tokens][num_heads][head_dim] with token stride ldq; out: [tokens][num_heads*head_dim].
// GQA: head h reads kv head h / (num_heads / num_kv_heads). softcap > 0: each scaled score s
// becomes softcap * tanh(s / softcap) (Gemma 2). sinks: null, or per head a logit in each
// softmax's denominator that attends to nothing (gpt-oss).
void paged_attention(const float* q, int64_t ldq, int64_t num_heads, KVLayer& cache,
                     const AttentionMetadata& meta, float scale, int64_t sliding_window,
                     float* out, ThreadPool& pool, float softcap = 0.0f, const float* sinks = nullptr,
                     const NewKV* new_kv = nullptr);

// For each (src, dst) pair copies block src to block dst in k and v.
void copy_blocks(KVLayer& cache, const std::vector<std::pair<int32_t, int32_t>>& pairs);

}  // namespace cserve::cpu
