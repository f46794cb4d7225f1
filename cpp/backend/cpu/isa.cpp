// Run-time instruction-set detection: cpuid for the CPU's features, xgetbv for
// the OS's support of the ymm/zmm register state; CSERVE_ISA may lower the level.
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cpu/kernels.h"
#include "cserve/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace cserve::cpu {

namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

Isa detect_isa() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Scalar;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             f16c = c & (1u << 29);
  if (!osxsave || !avx || !fma || !f16c) return Isa::Scalar;
  const uint64_t xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return Isa::Scalar;  // xmm + ymm state
  if (__get_cpuid_max(0, nullptr) < 7) return Isa::Scalar;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  if (!avx2) return Isa::Scalar;
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
  if (!avx512 || (xcr0 & 0xe0) != 0xe0) return Isa::Avx2;  // opmask + zmm state
  __cpuid_count(7, 1, a, b, c, d);
  const bool bf16 = a & (1u << 5);
  return bf16 ? Isa::Avx512Bf16 : Isa::Avx512;
}
#else
Isa detect_isa() { return Isa::Scalar; }
#endif

// The CSERVE_ISA request: a level, and whether AVX-VNNI may be used at the AVX2 level
// ("avx2" is plain AVX2 even on a CPU with AVX-VNNI; "avx2_vnni" allows it).
struct Request {
  Isa level = Isa::Avx512Bf16;
  bool avx_vnni = true;
};

Request requested_isa() {
  const char* env = std::getenv("CSERVE_ISA");
  if (env == nullptr || *env == '\0') return {};
  std::string s(env);
  if (s == "scalar") return {Isa::Scalar, false};
  if (s == "avx2") return {Isa::Avx2, false};
  if (s == "avx2_vnni") return {Isa::Avx2, true};
  if (s == "avx512") return {Isa::Avx512, true};
  if (s == "avx512_bf16" || s == "amx") return {Isa::Avx512Bf16, true};  // "amx": see cpu_has_amx
  throw InvalidArgument("CSERVE_ISA='" + s + "': expected scalar, avx2, avx2_vnni, avx512, avx512_bf16 or amx");
}

bool detect_avx_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  if (detect_isa() == Isa::Scalar || __get_cpuid_max(0, nullptr) < 7) return false;
  unsigned a, b, c, d;
  __cpuid_count(7, 1, a, b, c, d);
  return (a & (1u << 4)) != 0;  // AVX-VNNI: VEX-encoded vpdpbusd on ymm
#else
  return false;
#endif
}

}  // namespace

Isa cpu_isa() {
  // Detected once; the CPU and the environment of a process do not change.
  static const Isa isa = [] {
    Isa detected = detect_isa();
    Isa requested = requested_isa().level;
    return static_cast<int>(requested) < static_cast<int>(detected) ? requested : detected;
  }();
  return isa;
}

bool cpu_has_avx512_vnni() {
  static const bool vnni = [] {
    if (static_cast<int>(cpu_isa()) < static_cast<int>(Isa::Avx512)) return false;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    return (c & (1u << 11)) != 0;
#else
    return false;
#endif
  }();
  return vnni;
}

bool cpu_has_avx_vnni() {
  static const bool vnni = cpu_isa() != Isa::Scalar && requested_isa().avx_vnni && detect_avx_vnni();
  return vnni;
}

bool cpu_detects_avx_vnni() {
  static const bool vnni = detect_avx_vnni();
  return vnni;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512_bf16";
  }
  return "unknown";
}

}  // namespace cserve::cpu
