// The CPU communicator: collectives through a POSIX shared-memory segment (shm_segment.h),
// synchronized by per-rank sequence counters, without locks.
//
// Every rank runs the same sequence of phases. A rank posts a phase by storing its phase count
// in its own RankLine (release) and waits for a phase by spinning until every peer's count has
// reached it (acquire). A collective moves its data in rounds of at most one staging slot per
// rank; round k uses half k % 2 of the buffers. A rank starts writing round k + 2 into a half
// only after every peer has posted the first phase of round k + 1, which each posts only after
// it has finished reading round k, so two halves need no extra "done reading" phase.
//
// all_reduce, one round: every rank copies its chunk into its slot and posts; then
//   one-shot (small chunks): every rank sums all slots into its own data;
//   two-shot (large chunks): every rank sums its 1/size slice of the elements over all slots
//   into its own slot, posts, then copies every rank's summed slice out (reduce-scatter +
//   all-gather, as vLLM-CPU's shared-memory all-reduce).
// Both sum the ranks in order 0..size-1 in f32, so every rank gets bitwise the same result.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <vector>

#include "comm/collective_checks.h"
#include "comm/communicator.h"
#include "comm/reduce_kernels.h"
#include "comm/shm_segment.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace cserve {
namespace {

using Clock = std::chrono::steady_clock;
using comm::ShmSegment;

// Waiting: spin (a peer usually arrives within microseconds), then yield the core (ranks may
// share cores), then, once a wait has lasted a while, sleep briefly so an idle wait does not
// burn a core; longer once the wait looks idle (a rank waiting for the next step).
constexpr int kSpinPauses = 2048;
constexpr auto kYieldFor = std::chrono::milliseconds(10);
constexpr auto kSleep = std::chrono::microseconds(50);
constexpr auto kIdleAfter = std::chrono::seconds(1);
constexpr auto kIdleSleep = std::chrono::microseconds(500);
constexpr auto kLivenessPeriod = std::chrono::milliseconds(20);
// all_reduce chunks up to this size are reduced one-shot (one phase instead of two).
constexpr size_t kOneShotBytes = size_t{64} << 10;
// Two-shot slices start on cache-line boundaries.
constexpr size_t kSliceAlign = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class ShmCommunicator final : public Communicator {
 public:
  ShmCommunicator(const std::string& name, int rank, int size, double timeout_s, size_t buffer_bytes)
      : seg_(name, rank, size, timeout_s, buffer_bytes),
        rank_(rank),
        size_(size),
        timeout_s_(timeout_s),
        timeout_(std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(std::min(timeout_s, 1e9)))),
        srcs_(static_cast<size_t>(size)) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(void* data, int64_t count, DType dtype) override {
    comm::check_reduce_dtype(dtype);
    check_args("all_reduce", data, count);
    const size_t es = dtype_size(dtype);
    const int64_t chunk = static_cast<int64_t>(seg_.slot_bytes() / es);
    char* bytes = static_cast<char*>(data);
    for (int64_t off = 0; off < count; off += chunk) {
      const int64_t n = std::min(chunk, count - off);
      char* out = bytes + off * es;
      const int half = next_half();
      char* mine = seg_.slot(half, rank_);
      std::memcpy(mine, out, n * es);
      post();
      wait_all("all_reduce");
      if (static_cast<size_t>(n) * es <= kOneShotBytes) {
        for (int p = 0; p < size_; ++p) srcs_[p] = seg_.slot(half, p);
        comm::sum_arrays(out, srcs_.data(), size_, n, dtype);
        continue;
      }
      const int64_t per = slice_length(n, es);
      const int64_t lo = std::min(n, rank_ * per), hi = std::min(n, lo + per);
      for (int p = 0; p < size_; ++p) srcs_[p] = seg_.slot(half, p) + lo * es;
      comm::sum_arrays(mine + lo * es, srcs_.data(), size_, hi - lo, dtype);
      post();
      wait_all("all_reduce");
      for (int p = 0; p < size_; ++p) {
        const int64_t plo = std::min(n, p * per), phi = std::min(n, plo + per);
        std::memcpy(out + plo * es, seg_.slot(half, p) + plo * es, (phi - plo) * es);
      }
    }
  }

  void all_gather(const void* in, void* out, int64_t count, DType dtype) override {
    check_args("all_gather", in, count);
    check_args("all_gather", out, count);
    const size_t es = dtype_size(dtype);
    const int64_t chunk = static_cast<int64_t>(seg_.slot_bytes() / es);
    for (int64_t off = 0; off < count; off += chunk) {
      const int64_t n = std::min(chunk, count - off);
      const int half = next_half();
      std::memcpy(seg_.slot(half, rank_), static_cast<const char*>(in) + off * es, n * es);
      post();
      wait_all("all_gather");
      for (int p = 0; p < size_; ++p)
        std::memcpy(static_cast<char*>(out) + (p * count + off) * es, seg_.slot(half, p), n * es);
    }
  }

  void broadcast(void* data, size_t bytes, int root, bool untimed) override {
    untimed_ = untimed;
    struct Reset {
      bool& flag;
      ~Reset() { flag = false; }
    } reset{untimed_};
    comm::check_root(root, size_);
    check_args("broadcast", data, static_cast<int64_t>(bytes));
    // The root writes a whole half (every rank's slot) per round.
    const size_t chunk = seg_.slot_bytes() * static_cast<size_t>(size_);
    char* d = static_cast<char*>(data);
    for (size_t off = 0; off < bytes; off += chunk) {
      const size_t n = std::min(chunk, bytes - off);
      char* staging = seg_.slot(next_half(), 0);
      if (rank_ == root) std::memcpy(staging, d + off, n);
      post();
      wait_all("broadcast");
      if (rank_ != root) std::memcpy(d + off, staging, n);
    }
  }

  void barrier() override {
    check_usable("barrier");
    post();
    wait_all("barrier");
  }

  void abort(const std::string& reason) override {
    abort_reason_.set(reason);
    uint64_t none = 0;
    seg_.header().abort_word.compare_exchange_strong(none, static_cast<uint64_t>(rank_ + 1) << 32,
                                                     std::memory_order_acq_rel);
  }

 private:
  // Every rank validates the same arguments before its first phase, so a bad call fails on
  // all ranks alike instead of leaving the others waiting.
  void check_args(const char* op, const void* p, int64_t count) {
    comm::check_buffer(op, p, count);
    check_usable(op);
  }

  void check_usable(const char* op) {
    if (!failure_.empty())
      throw CommTimeout(std::string(op) + ": the group failed earlier and cannot be used: " + failure_);
    if (seg_.header().abort_word.load(std::memory_order_acquire) != 0) fail_aborted(op);
  }

  // Another rank (or this one, from another thread) gave up on the group.
  [[noreturn]] void fail_aborted(const char* op) {
    const uint64_t word = seg_.header().abort_word.load(std::memory_order_acquire);
    const int reporter = static_cast<int>(word >> 32) - 1;
    const int missing = static_cast<int>(word & 0xffffffffu) - 1;
    std::string what;
    if (reporter == rank_ && missing < 0) {
      what = abort_reason_.what();
    } else if (missing < 0) {
      what = "the group failed: rank " + std::to_string(reporter) + " aborted it";
    } else {
      what = "the group failed: rank " + std::to_string(reporter) + " gave up waiting for rank " +
             std::to_string(missing);
    }
    fail(op, what, missing);
  }

  int next_half() { return static_cast<int>(round_++ & 1); }

  int64_t slice_length(int64_t n, size_t es) const {
    const int64_t align = static_cast<int64_t>(kSliceAlign / es);
    const int64_t per = (n + size_ - 1) / size_;
    return (per + align - 1) / align * align;
  }

  void post() {
    ++seq_;
    seg_.line(rank_).seq.store(seq_, std::memory_order_release);
  }

  void wait_all(const char* op) {
    for (int p = 0; p < size_; ++p)
      if (p != rank_) wait_peer(p, op);
  }

  void wait_peer(int p, const char* op) {
    const std::atomic<uint64_t>& seq = seg_.line(p).seq;
    for (int i = 0; i < kSpinPauses; ++i) {
      if (seq.load(std::memory_order_acquire) >= seq_) return;
      cpu_relax();
    }
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline = untimed_ ? Clock::time_point::max() : start + timeout_;
    Clock::time_point next_liveness = start + kLivenessPeriod;
    for (;;) {
      if (seq.load(std::memory_order_acquire) >= seq_) return;
      const Clock::time_point now = Clock::now();
      if (seg_.header().abort_word.load(std::memory_order_acquire) != 0) fail_aborted(op);
      if (now >= next_liveness) {
        if (seg_.rank_exited(p)) fail(op, "rank " + std::to_string(p) + " has exited", p);
        next_liveness = now + kLivenessPeriod;
      }
      if (now >= deadline) {
        char secs[32];
        std::snprintf(secs, sizeof secs, "%g", timeout_s_);
        fail(op, "rank " + std::to_string(p) + " did not arrive within " + secs + " s", p);
      }
      if (now - start < kYieldFor) {
        sched_yield();
      } else {
        const auto nap = now - start < kIdleAfter ? kSleep : kIdleSleep;
        const timespec ts{0, std::chrono::duration_cast<std::chrono::nanoseconds>(nap).count()};
        nanosleep(&ts, nullptr);
      }
    }
  }

  // Gives up on the group: tells the other ranks (the first report wins) and throws.
  [[noreturn]] void fail(const char* op, const std::string& what, int missing) {
    uint64_t none = 0;
    const uint64_t word = (static_cast<uint64_t>(rank_ + 1) << 32) | static_cast<uint64_t>(missing + 1);
    seg_.header().abort_word.compare_exchange_strong(none, word, std::memory_order_acq_rel);
    failure_ = what + " (shm group '" + seg_.name() + "', rank " + std::to_string(rank_) + " of " +
               std::to_string(size_) + ")";
    throw CommTimeout(std::string(op) + ": " + failure_);
  }

  ShmSegment seg_;
  int rank_;
  int size_;
  double timeout_s_;
  Clock::duration timeout_;
  bool untimed_ = false;  // the current collective waits without a deadline
  uint64_t seq_ = 0;    // phases this rank has posted
  uint64_t round_ = 0;  // buffer rounds this rank has started
  std::vector<const void*> srcs_;
  std::string failure_;  // why the group failed; empty while it works (the collective's thread)
  comm::AbortReason abort_reason_;  // abort() may come from another thread
};

}  // namespace

std::unique_ptr<Communicator> make_shm_communicator(const std::string& name, int rank, int size, double timeout_s,
                                                    size_t buffer_bytes) {
  return std::make_unique<ShmCommunicator>(name, rank, size, timeout_s, buffer_bytes);
}

}  // namespace cserve
