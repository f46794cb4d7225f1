// DType names and sizes, and IEEE half <-> float conversions.
#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cserve/error.h"
#include "util/vector_clones.h"

namespace cserve {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F8E4M3:
    case DType::F8E5M2: return 1;
  }
  throw InvalidArgument("dtype_size: unknown dtype");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F8E4M3: return "fp8_e4m3";
    case DType::F8E5M2: return "fp8_e5m2";
  }
  return "unknown";
}

DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "float") return DType::F32;
  if (name == "float16" || name == "half") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  throw InvalidArgument("unknown dtype '" + name + "' (expected float32, float16 or bfloat16)");
}

DType parse_kv_cache_dtype(const std::string& name) {
  if (name == "fp8" || name == "fp8_e4m3") return DType::F8E4M3;
  if (name == "fp8_e5m2") return DType::F8E5M2;
  return parse_dtype(name);
}

namespace {
struct Fp8Format {
  int mantissa_bits, bias;
  float max;
};
Fp8Format fp8_format(DType t) {
  return t == DType::F8E4M3 ? Fp8Format{3, 7, 448.0f} : Fp8Format{2, 15, 57344.0f};
}
}  // namespace

float fp8_to_f32(uint8_t v, DType t) {
  const Fp8Format f = fp8_format(t);
  const int exp_bits = 7 - f.mantissa_bits;
  const float sign = (v & 0x80u) ? -1.0f : 1.0f;
  const int e = (v >> f.mantissa_bits) & ((1 << exp_bits) - 1);
  const int m = v & ((1 << f.mantissa_bits) - 1);
  if (t == DType::F8E4M3 && e == 15 && m == 7) return std::nanf("");
  if (t == DType::F8E5M2 && e == 31) return m == 0 ? sign * INFINITY : std::nanf("");
  const float scale = static_cast<float>(1 << f.mantissa_bits);
  if (e == 0) return sign * std::ldexp(static_cast<float>(m) / scale, 1 - f.bias);
  return sign * std::ldexp(1.0f + static_cast<float>(m) / scale, e - f.bias);
}

uint8_t f32_to_fp8(float x, DType t) {
  const Fp8Format f = fp8_format(t);
  if (std::isnan(x)) return t == DType::F8E4M3 ? 0x7f : 0x7e;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  float a = std::min(std::fabs(x), f.max);  // saturate
  const int emin = 1 - f.bias;
  int e;
  std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  e = std::max(e - 1, emin);  // a's binade (subnormals share the smallest)
  const float quantum = std::ldexp(1.0f, e - f.mantissa_bits);
  const float q = std::nearbyint(a / quantum) * quantum;  // nearest even (default rounding mode)
  if (q == 0.0f) return sign;
  int qe;
  std::frexp(q, &qe);
  qe -= 1;
  if (qe < emin) return static_cast<uint8_t>(sign | static_cast<uint8_t>(q / std::ldexp(1.0f, emin - f.mantissa_bits)));
  const int m = static_cast<int>((q / std::ldexp(1.0f, qe) - 1.0f) * static_cast<float>(1 << f.mantissa_bits));
  return static_cast<uint8_t>(sign | ((qe + f.bias) << f.mantissa_bits) | m);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf or nan (payload kept)
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;  // signed zero
  } else {
    // Subnormal: normalise the mantissa.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    u = sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // nan: keep it quiet and keep top payload bits
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  int32_t exp = static_cast<int32_t>(abs >> 23) - 127;
  if (exp >= -14) {
    // Normal half: round mantissa from 23 to 10 bits, nearest even.
    uint32_t r = abs - (112u << 23);  // rebias exponent
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  if (exp < -25) return sign;  // below half of the smallest subnormal
  // Subnormal half: value = mant * 2^-24.
  uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // 24-bit significand, value mant * 2^(exp-23)
  int shift = -exp - 1;                           // 14..24 so result = mant >> shift
  uint32_t q = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

void convert_to_f32(const void* src, DType from, float* dst, size_t n) {
  if (n == 0) return;
  switch (from) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F8E4M3:
    case DType::F8E5M2: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = fp8_to_f32(s[i], from);
      return;
    }
  }
}

namespace {

// f32_to_bf16 over n values, written as selects so that it vectorizes (KV cache rows, weights).
CSERVE_VECTOR_CLONES void f32_to_bf16_n(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i, 4);
    const uint32_t nan = (u >> 16) | 0x40u, rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    dst[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

}  // namespace

void convert_from_f32(const float* src, void* dst, DType to, size_t n) {
  if (n == 0) return;
  switch (to) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16:
      f32_to_bf16_n(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::F8E4M3:
    case DType::F8E5M2: {
      uint8_t* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_fp8(src[i], to);
      return;
    }
  }
}

}  // namespace cserve
