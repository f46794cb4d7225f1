// Collectives over a device backend's own memory (tensor and pipeline parallelism on GPUs): the
// same Communicator interface, with pointers into memory the backend allocated, ordered on the
// backend's stream (a call returns once the work is queued, not done). On CUDA: NCCL for
// all_reduce, all_gather and broadcast, and the custom all-reduce over CUDA IPC buffers for
// all-reduces up to custom_all_reduce_max_bytes when every pair of the group's GPUs can reach
// each other's memory. Both are recorded into CUDA graphs when the backend captures one.
#pragma once
#include <cstdint>
#include <memory>

#include "backend/backend.h"
#include "comm/communicator.h"

namespace cserve {

struct DeviceCommunicatorOptions {
  // --disable-custom-all-reduce: NCCL for every all-reduce.
  bool custom_all_reduce = true;
  // All-reduces of at most this many bytes take the custom all-reduce (its registered buffer's
  // size; larger ones would go in chunks, where NCCL's ring is faster).
  int64_t custom_all_reduce_max_bytes = int64_t{8} << 20;
  // How long a collective may take before the group gives up on a peer (CommTimeout): a rank
  // that died or hangs never hangs this one.
  double timeout_s = 60.0;
};

// The group's device communicator for this rank: `host` (the same group's host communicator,
// which must outlive the call only) carries the set-up (NCCL's unique id, the IPC handles,
// every rank's GPU). `backend` must be a device backend (the CUDA one) and outlive the result.
// Throws NotSupported for a host-memory backend, or naming what is missing (e.g. NCCL, with the
// package that provides it).
std::unique_ptr<Communicator> make_device_communicator(Backend& backend, Communicator& host,
                                                       const DeviceCommunicatorOptions& options = {});

}  // namespace cserve
