#include "core/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "cserve/error.h"

namespace cserve {

namespace {

constexpr int64_t QK_K = 256;

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (of 8) from the 12 packed bytes.
void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Each ggml block type as per-32-value sub-blocks of (d, m, codes): w = d * u + m.
// `emit(sub, d, m, codes)` gets 32 codes in natural order.
template <class Emit>
void for_each_subblock(GgmlType t, const uint8_t* b, Emit&& emit) {
  uint8_t u[32];
  switch (t) {
    case GgmlType::Q4_0: {
      const float d = half(b);
      for (int j = 0; j < 16; ++j) u[j] = b[2 + j] & 0xF, u[j + 16] = b[2 + j] >> 4;
      emit(0, d, -8.0f * d, u);
      return;
    }
    case GgmlType::Q4_1: {
      for (int j = 0; j < 16; ++j) u[j] = b[4 + j] & 0xF, u[j + 16] = b[4 + j] >> 4;
      emit(0, half(b), half(b + 2), u);
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      const bool has_min = t == GgmlType::Q5_1;
      const float d = half(b);
      const float mn = has_min ? half(b + 2) : -16.0f * d;
      uint32_t qh;
      std::memcpy(&qh, b + (has_min ? 4 : 2), 4);
      const uint8_t* qs = b + (has_min ? 8 : 6);
      for (int j = 0; j < 16; ++j) {
        u[j] = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10);
        u[j + 16] = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
      }
      emit(0, d, mn, u);
      return;
    }
    case GgmlType::Q8_0: {
      const float d = half(b);
      for (int j = 0; j < 32; ++j) u[j] = static_cast<uint8_t>(static_cast<int8_t>(b[2 + j]) + 128);
      emit(0, d, -128.0f * d, u);
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool five = t == GgmlType::Q5_K;
      const float d = half(b), dmin = half(b + 2);
      const uint8_t* scales = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* ql = b + (five ? 48 : 16);
      for (int j = 0; j < 4; ++j) {  // 64 values per step: two sub-blocks
        for (int half_ = 0; half_ < 2; ++half_) {
          int sc, mn;
          scale_min_k4(2 * j + half_, scales, &sc, &mn);
          const int shift = half_ ? 4 : 0;
          const uint8_t bit = static_cast<uint8_t>(1u << (2 * j + half_));
          for (int l = 0; l < 32; ++l) {
            uint8_t v = (ql[32 * j + l] >> shift) & 0xF;
            if (five && (qh[l] & bit)) v += 16;
            u[l] = v;
          }
          emit(2 * j + half_, d * sc, -dmin * mn, u);
        }
      }
      return;
    }
    case GgmlType::MXFP4: {
      const float d = mxfp4_half_scale(b[0]);
      for (int j = 0; j < 16; ++j) u[j] = mxfp4_code(b[1 + j] & 0xF), u[j + 16] = mxfp4_code(b[1 + j] >> 4);
      emit(0, d, -12.0f * d, u);
      return;
    }
    case GgmlType::QB4:
    case GgmlType::QB8: {
      float d, m;
      std::memcpy(&d, b, 4);
      std::memcpy(&m, b + 4, 4);
      if (t == GgmlType::QB8) {
        emit(0, d, m, b + 8);
        return;
      }
      for (int j = 0; j < 16; ++j) u[j] = b[8 + j] & 0xF, u[j + 16] = b[8 + j] >> 4;
      emit(0, d, m, u);
      return;
    }
    default:
      throw NotSupported(std::string("ggml type ") + ggml_type_name(t) + " has no 32-value sub-blocks");
  }
}

bool maps_to_qblocks(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::Q8_0: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::MXFP4: case GgmlType::QB4:
    case GgmlType::QB8:
      return true;
    default:
      return false;
  }
}

void dequantize_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int n = 0; n < QK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

}  // namespace

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::MXFP4: return "MXFP4";
    case GgmlType::QB4: return "QB4";
    case GgmlType::QB8: return "QB8";
  }
  return "unknown";
}

int64_t ggml_block_elems(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: return 1;
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
    case GgmlType::MXFP4: case GgmlType::QB4: case GgmlType::QB8:
      return 32;
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: return QK_K;
    default: return 0;
  }
}

int64_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 4;
    case GgmlType::F16: case GgmlType::BF16: return 2;
    case GgmlType::Q4_0: return 18;
    case GgmlType::Q4_1: return 20;
    case GgmlType::Q5_0: return 22;
    case GgmlType::Q5_1: return 24;
    case GgmlType::Q8_0: return 34;
    case GgmlType::MXFP4: return 17;
    case GgmlType::Q4_K: return 144;
    case GgmlType::Q5_K: return 176;
    case GgmlType::Q6_K: return 210;
    case GgmlType::QB4: return 24;
    case GgmlType::QB8: return 40;
    default: return 0;
  }
}

bool ggml_type_supported(GgmlType t) {
  return ggml_block_elems(t) != 0 && t != GgmlType::QB4 && t != GgmlType::QB8;
}

size_t ggml_row_bytes(GgmlType t, int64_t cols) {
  return static_cast<size_t>(cols / ggml_block_elems(t) * ggml_block_bytes(t));
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::F16: convert_to_f32(src, DType::F16, dst, static_cast<size_t>(n)); return;
    case GgmlType::BF16: convert_to_f32(src, DType::BF16, dst, static_cast<size_t>(n)); return;
    case GgmlType::Q6_K:
      for (int64_t i = 0; i < n / QK_K; ++i) dequantize_q6_k(b + i * 210, dst + i * QK_K);
      return;
    default: break;
  }
  if (!maps_to_qblocks(t)) throw NotSupported(std::string("cannot dequantize ggml type ") + ggml_type_name(t));
  const int64_t be = ggml_block_elems(t), bb = ggml_block_bytes(t);
  for (int64_t i = 0; i < n / be; ++i)
    for_each_subblock(t, b + i * bb, [&](int sub, float d, float m, const uint8_t* u) {
      float* y = dst + i * be + sub * 32;
      for (int j = 0; j < 32; ++j) y[j] = d * u[j] + m;
    });
}

bool qblock_scales_are_f16(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 || t == GgmlType::Q5_1 ||
         t == GgmlType::Q8_0;
}

int qblock_bits(GgmlType t) {
  return (t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q4_K || t == GgmlType::QB4) ? 4 : 8;
}

bool mxfp4_scale_supported(uint8_t e8m0) { return e8m0 <= 251; }

uint8_t mxfp4_code(uint8_t fp4) {
  static constexpr uint8_t kDoubled[8] = {0, 1, 2, 3, 4, 6, 8, 12};  // 2 * {0, 0.5, 1, 1.5, 2, 3, 4, 6}
  const uint8_t mag = kDoubled[fp4 & 7];
  return static_cast<uint8_t>((fp4 & 8) ? 12 - mag : 12 + mag);
}

float mxfp4_half_scale(uint8_t e8m0) { return std::ldexp(1.0f, static_cast<int>(e8m0) - 128); }

void write_qblock(GgmlType t, uint8_t* dst, float d, float m, const uint8_t* u) {
  std::memcpy(dst, &d, 4);
  std::memcpy(dst + 4, &m, 4);
  if (t == GgmlType::QB8) {
    std::memcpy(dst + 8, u, 32);
    return;
  }
  if (t != GgmlType::QB4) throw InvalidArgument("write_qblock: not a QB4 / QB8 type");
  for (int j = 0; j < 16; ++j) dst[8 + j] = static_cast<uint8_t>(u[j] | (u[j + 16] << 4));
}

void to_qblocks(GgmlType t, const void* src, int64_t k, uint8_t* codes, float* d, float* m, float* scratch) {
  if (maps_to_qblocks(t)) {
    const int64_t be = ggml_block_elems(t), bb = ggml_block_bytes(t);
    const auto* p = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < k / be; ++i)
      for_each_subblock(t, p + i * bb, [&](int sub, float dd, float mm, const uint8_t* u) {
        const int64_t block = i * (be / kQBlock) + sub;
        d[block] = dd;
        m[block] = mm;
        std::memcpy(codes + block * kQBlock, u, kQBlock);
      });
    return;
  }
  // Requantize to symmetric 8-bit blocks: u = round(w / d) + 128.
  dequantize_row(t, src, scratch, k);
  for (int64_t b = 0; b < k / kQBlock; ++b) {
    const float* w = scratch + b * kQBlock;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[j]));
    const float dd = amax / 127.0f;
    const float inv = dd > 0.0f ? 1.0f / dd : 0.0f;
    for (int j = 0; j < 32; ++j)
      codes[b * kQBlock + j] = static_cast<uint8_t>(static_cast<int>(std::lrintf(w[j] * inv)) + 128);
    d[b] = dd;
    m[b] = -128.0f * dd;
  }
}

}  // namespace cserve
