// The POSIX shared-memory segment a group of ranks on one host meets in: its layout, its
// creation by rank 0 and its attachment by the others. The collectives live in
// shm_communicator.cpp.
//
// Layout (every rank maps all of it):
//   [0, 256)                 SegmentHeader
//   [256, 256 + 128 * size)  one RankLine per rank (own cache lines: written only by that rank)
//   [buffers, +2*size*slot)  two halves, each with one staging slot of slot_bytes per rank;
//                            consecutive rounds of a collective alternate between the halves.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace cserve::comm {

struct alignas(64) SegmentHeader {
  std::atomic<uint64_t> magic;  // kSegmentMagic once rank 0 has filled in the rest
  int32_t size;
  uint32_t version;
  uint64_t slot_bytes;
  uint64_t total_bytes;
  // 0 while the group is healthy; else ((reporter + 1) << 32) | (missing + 1) from the first
  // rank that gave up on a peer (missing + 1 == 0: it aborted), so the others stop waiting too.
  std::atomic<uint64_t> abort_word;
};

struct alignas(128) RankLine {
  std::atomic<uint64_t> seq;       // the last phase this rank has posted (collectives)
  std::atomic<uint32_t> attached;  // 0: not yet; 2: being claimed; 1: attached (pid valid)
  int32_t pid;                     // the rank's process, to notice that it has exited
  uint64_t pid_namespace;          // its pid namespace (inode), as pids only compare within one
};

static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free,
              "the shared-memory communicator needs address-free lock-free atomics");

class ShmSegment {
 public:
  // Rank 0 creates the segment (replacing a stale one of the same name), waits until every
  // rank has attached, then removes the name. Other ranks attach, waiting for rank 0 to create
  // it. Both give up after timeout_s (CommTimeout). slot_bytes: see make_shm_communicator.
  ShmSegment(const std::string& name, int rank, int size, double timeout_s, size_t slot_bytes);
  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  SegmentHeader& header() const { return *static_cast<SegmentHeader*>(base_); }
  RankLine& line(int rank) const;
  // Rank `rank`'s staging slot in half `half` (0 or 1); a half's slots are contiguous, so
  // slot(half, 0) starts size * slot_bytes() bytes of that half.
  char* slot(int half, int rank) const;
  size_t slot_bytes() const { return slot_bytes_; }
  const std::string& name() const { return name_; }
  // Whether rank `rank`'s process is known to have exited (false when it cannot be told).
  bool rank_exited(int rank) const;

 private:
  void create(double timeout_s, size_t slot_bytes);
  void wait_for_ranks(double timeout_s);
  bool try_attach();
  void claim_line();
  void unmap();

  std::string name_;  // as given, for messages
  std::string path_;  // the shm_open name, with its leading '/'
  int rank_;
  int size_;
  uint64_t pid_namespace_;
  void* base_ = nullptr;
  size_t total_bytes_ = 0;
  size_t slot_bytes_ = 0;
  size_t buffers_offset_ = 0;
  bool named_ = false;  // rank 0: the name still exists and is ours to remove
};

// The staging slot size: `requested`, else CSERVE_SHM_COMM_BYTES, else 2 MiB; rounded up to a
// multiple of 4 KiB. Throws InvalidArgument on a malformed environment value.
size_t shm_slot_bytes(size_t requested);

}  // namespace cserve::comm
