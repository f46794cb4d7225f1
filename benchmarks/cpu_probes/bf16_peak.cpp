// The AVX512-BF16 dot-product peak of this CPU: 12 independent vdpbf16ps chains (64 FLOPs
// each), 1 and 2 threads. The bf16 GEMM ceiling in docs/benchmarks.md comes from here:
//   g++ -O2 -mavx512f -mavx512bf16 -mavx512bw -mavx512vl bf16_peak.cpp -o bf16_peak -lpthread && ./bf16_peak
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <thread>
double run(long iters){
  __m512 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_setzero_ps();
  __m512i a=_mm512_set1_epi32(0x3f803f80), b=_mm512_set1_epi32(0x3f803f80);
  auto t=std::chrono::steady_clock::now();
  for(long i=0;i<iters;i++){
    #pragma GCC unroll 12
    for(int j=0;j<12;j++) acc[j]=_mm512_dpbf16_ps(acc[j],(__m512bh)a,(__m512bh)b);
    asm volatile("" : "+v"(a));
  }
  double dt=std::chrono::duration<double>(std::chrono::steady_clock::now()-t).count();
  float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(acc[i]);
  if(s==1.0f) printf("x");
  return iters*12.0*64/dt/1e9;
}
int main(){ printf("1 thread: %.0f GFLOP/s\n", run(200000000));
 double r[2]; std::thread t1([&]{r[0]=run(200000000);}); std::thread t2([&]{r[1]=run(200000000);}); t1.join(); t2.join();
 printf("2 threads: %.0f GFLOP/s\n", r[0]+r[1]);}
