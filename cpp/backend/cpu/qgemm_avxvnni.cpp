// AVX2 quantized GEMM with AVX-VNNI (VEX vpdpbusd on ymm: Alder Lake, Sapphire Rapids, Zen 5);
// the kernel is qgemm_avx2_impl.h's. Compiled with -mavxvnni, run only when cpu_has_avx_vnni().
#include "backend/cpu/qgemm_avx2_impl.h"

namespace cserve::cpu::detail {

void qgemm_panels_avxvnni(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  dispatch<true, 8, 3, 4>(g, panel_begin, panel_end);
}

}  // namespace cserve::cpu::detail
