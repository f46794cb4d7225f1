// What every Communicator checks before a collective's first phase (every rank validates the
// same arguments, so a bad call fails on all ranks alike instead of leaving the others waiting),
// and the reason of an abort() that may come from another thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "cserve/error.h"

namespace cserve::comm {

// all_reduce sums F32, BF16 and F16 (NotSupported otherwise).
inline void check_reduce_dtype(DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw NotSupported(std::string("all_reduce: dtype ") + dtype_name(dtype) +
                       " is not supported (float32, bfloat16, float16)");
}

// InvalidArgument for a negative count, or a null buffer for a non-empty message.
inline void check_buffer(const char* op, const void* p, int64_t count) {
  if (count < 0) throw InvalidArgument(std::string(op) + ": negative count " + std::to_string(count));
  if (count > 0 && !p) throw InvalidArgument(std::string(op) + ": null buffer");
}

inline void check_root(int root, int size) {
  if (root < 0 || root >= size)
    throw InvalidArgument("broadcast: root " + std::to_string(root) + " is not a rank of a group of " +
                          std::to_string(size));
}

// The reason given to the first abort(): the thread that claims it writes it, then marks it
// ready for the others.
class AbortReason {
 public:
  void set(const std::string& reason) {
    if (!claimed_.exchange(true, std::memory_order_acq_rel)) {
      reason_ = reason;
      ready_.store(true, std::memory_order_release);
    }
  }
  bool claimed() const { return claimed_.load(std::memory_order_acquire); }
  // "aborted: <reason>", or "aborted" while the reason is still being written.
  std::string what() const { return ready_.load(std::memory_order_acquire) ? "aborted: " + reason_ : "aborted"; }

 private:
  std::atomic<bool> claimed_{false};
  std::atomic<bool> ready_{false};
  std::string reason_;
};

}  // namespace cserve::comm
