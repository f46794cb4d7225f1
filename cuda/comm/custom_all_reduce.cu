#include <stdexcept>
#include <string>

#include "comm/custom_all_reduce.h"
#include "common.cuh"

namespace cserve::cuda {

namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Writes the epoch into this rank's slot of every rank's flags, then waits until every rank's
// epoch has reached this rank's flags (or the host aborts, or timeout_ns passes). The epoch is
// `epoch`, or the device counter's next value. One block; system-scope fences because the peers
// are other processes.
__global__ void barrier_kernel(AllReducePeers p, uint32_t epoch) {
  __shared__ uint32_t e;
  const int t = threadIdx.x;
  if (t == 0) e = p.counter ? *p.counter + 1 : epoch;
  __syncthreads();
  if (t < p.size) {
    __threadfence_system();
    volatile uint32_t* slot = p.flags[t] + p.rank;
    *slot = e;
  }
  __syncthreads();
  if (t < p.size) {
    volatile uint32_t* mine = p.flags[p.rank] + t;
    const uint64_t start = p.timeout_ns ? global_ns() : 0;
    while (*mine < e) {
      if (p.status && *p.status) break;
      if (p.timeout_ns && global_ns() - start > p.timeout_ns) {
        if (p.status) *p.status = kAllReduceTimedOut;
        break;
      }
    }
  }
  __threadfence_system();
  __syncthreads();
  if (t == 0 && p.counter) *p.counter = e;
}

template <class T>
__global__ void one_shot_sum(AllReducePeers p, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int r = 0; r < p.size; ++r) s += to_f32(static_cast<const volatile T*>(p.buffers[r])[i]);
    out[i] = from_f32<T>(s);
  }
}

// Two-shot, first half: this rank's slice [begin, end) summed into its own buffer.
template <class T>
__global__ void reduce_slice(AllReducePeers p, int64_t begin, int64_t end) {
  T* mine = static_cast<T*>(p.buffers[p.rank]);
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < end;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int r = 0; r < p.size; ++r) s += to_f32(static_cast<const volatile T*>(p.buffers[r])[i]);
    mine[i] = from_f32<T>(s);
  }
}

// Two-shot, second half: every slice from the rank that summed it.
template <class T>
__global__ void gather_slices(AllReducePeers p, T* out, int64_t n, int64_t per) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<const volatile T*>(p.buffers[i / per])[i];
}

size_t elem_bytes(int dtype) {
  if (dtype == kF32) return 4;
  if (dtype == kF16 || dtype == kBF16) return 2;
  throw std::invalid_argument("custom all-reduce: dtype must be f32, f16 or bf16");
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024));
}

template <class T>
void run_chunk(const AllReducePeers& p, T* data, int64_t n, uint32_t epoch, bool two_shot, cudaStream_t s) {
  check(cudaMemcpyAsync(p.buffers[p.rank], data, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice, s),
        "custom all-reduce: copy in");
  barrier_kernel<<<1, 32, 0, s>>>(p, epoch);
  if (!two_shot) {
    one_shot_sum<T><<<blocks_for(n), kThreads, 0, s>>>(p, data, n);
  } else {
    const int64_t per = (n + p.size - 1) / p.size;
    const int64_t begin = std::min<int64_t>(n, p.rank * per), end = std::min<int64_t>(n, begin + per);
    if (end > begin) reduce_slice<T><<<blocks_for(end - begin), kThreads, 0, s>>>(p, begin, end);
    barrier_kernel<<<1, 32, 0, s>>>(p, epoch + 1);
    gather_slices<T><<<blocks_for(n), kThreads, 0, s>>>(p, data, n, per);
  }
  barrier_kernel<<<1, 32, 0, s>>>(p, epoch + (two_shot ? 2 : 1));
  check(cudaGetLastError(), "custom all-reduce");
}

}  // namespace

uint32_t custom_all_reduce_epochs(const AllReducePeers& p, int64_t count, int dtype, bool two_shot) {
  const int64_t per_chunk = p.buffer_bytes / static_cast<int64_t>(elem_bytes(dtype));
  const int64_t chunks = per_chunk > 0 ? (count + per_chunk - 1) / per_chunk : 0;
  return static_cast<uint32_t>(chunks * (two_shot ? 3 : 2));
}

void invokeCustomAllReduce(const AllReducePeers& p, void* data, int64_t count, int dtype, uint32_t epoch,
                           bool two_shot, cudaStream_t stream) {
  if (p.size < 1 || p.size > kMaxRanks || p.rank < 0 || p.rank >= p.size)
    throw std::invalid_argument("custom all-reduce: a group of 1 to 8 ranks");
  const size_t es = elem_bytes(dtype);
  const int64_t per_chunk = p.buffer_bytes / static_cast<int64_t>(es);
  if (per_chunk <= 0) throw std::invalid_argument("custom all-reduce: no registered buffer");
  const uint32_t step = two_shot ? 3 : 2;
  for (int64_t off = 0; off < count; off += per_chunk, epoch += step) {
    const int64_t n = std::min(per_chunk, count - off);
    char* chunk = static_cast<char*>(data) + static_cast<size_t>(off) * es;
    if (dtype == kF32)
      run_chunk(p, reinterpret_cast<float*>(chunk), n, epoch, two_shot, stream);
    else if (dtype == kF16)
      run_chunk(p, reinterpret_cast<__half*>(chunk), n, epoch, two_shot, stream);
    else
      run_chunk(p, reinterpret_cast<__nv_bfloat16*>(chunk), n, epoch, two_shot, stream);
  }
}

}  // namespace cserve::cuda
