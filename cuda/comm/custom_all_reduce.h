// The custom all-reduce of tensor parallelism on GPUs of one host (vLLM's custom_all_reduce and
// TensorRT-LLM's are the anchors): every rank registers one device buffer and one flag array
// with CUDA IPC and maps the other ranks'; an all-reduce then needs no host round trip:
//   1. each rank copies its input into its own registered buffer;
//   2. a barrier: each rank writes the call's epoch into its slot of every rank's flags and waits
//      until every rank's epoch has arrived in its own;
//   3. one-shot (small messages): each rank sums all ranks' buffers into its output;
//      two-shot (large ones): each rank sums its 1/size of the elements over all buffers into its
//      own buffer, a barrier, then each rank gathers the summed slices from all buffers;
//   4. a closing barrier, so that no rank overwrites its buffer while a peer still reads it.
// Every step is a kernel on the caller's stream with fixed addresses, so the sequence can be
// captured in a CUDA graph (with AllReducePeers::counter set). Ranks: at most kMaxRanks.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

constexpr int kMaxRanks = 8;

struct AllReducePeers {
  int rank = 0;
  int size = 1;
  void* buffers[kMaxRanks] = {};     // each rank's registered buffer, mapped in this process
  uint32_t* flags[kMaxRanks] = {};   // each rank's flags [kMaxRanks] (uint32), mapped here
  int64_t buffer_bytes = 0;          // the size of each registered buffer
  // Graph-safe epochs: this rank's count of barriers in its own device memory, read and advanced
  // by the barrier kernel itself, so that a replayed graph never reuses a captured epoch (every
  // rank runs the same sequence of barriers, eager or replayed). Null: the epoch the caller gives.
  uint32_t* counter = nullptr;
  // Host-mapped status word (null: none): the host sets kAllReduceAborted to stop waiting
  // barriers; a barrier that waits past timeout_ns (0: forever) sets kAllReduceTimedOut and gives
  // up. Either way the group is then out of step and cannot be used again.
  volatile uint32_t* status = nullptr;
  uint64_t timeout_ns = 0;
};
constexpr uint32_t kAllReduceAborted = 1;
constexpr uint32_t kAllReduceTimedOut = 2;

// data: this rank's `count` elements of dtype (0 f32, 1 f16, 2 bf16; cserve::DType's values) on
// the device, replaced by the sum over ranks. epoch: a value no earlier call of this group used
// (callers count calls from 1); two_shot picks the large-message algorithm. Messages larger than
// the buffer go in chunks, each chunk using epochs epoch .. epoch + 2 (the next call must start
// past them: calls_per_chunk(two_shot) * chunks).
void invokeCustomAllReduce(const AllReducePeers& peers, void* data, int64_t count, int dtype, uint32_t epoch,
                           bool two_shot, cudaStream_t stream);
// The epochs one call uses (callers add this to their counter).
uint32_t custom_all_reduce_epochs(const AllReducePeers& peers, int64_t count, int dtype, bool two_shot);

}  // namespace cserve::cuda
