// Loops written so the compiler vectorizes them, built for AVX-512, AVX2 and baseline x86-64;
// target_clones picks the version at load time, so one build runs on any CPU.
#pragma once

#define CSERVE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
