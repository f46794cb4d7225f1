// Creation and attachment of the shared-memory segment of a communicator group.
#include "comm/shm_segment.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <thread>

#include "comm/communicator.h"

namespace cserve::comm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kSegmentMagic = 0x63736572766553ull;  // "cserveS"
constexpr uint32_t kVersion = 1;
constexpr size_t kLinesOffset = 256;
constexpr size_t kPage = 4096;
constexpr size_t kDefaultSlotBytes = size_t{2} << 20;
constexpr auto kAttachPoll = std::chrono::microseconds(200);

static_assert(sizeof(SegmentHeader) <= kLinesOffset, "the header must fit before the rank lines");

size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

std::string errno_text() { return std::strerror(errno); }

uint64_t own_pid_namespace() {
  struct stat st;
  return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

Clock::time_point deadline_after(double seconds) {
  // Clamped so that an enormous timeout does not overflow the clock.
  const double s = std::min(seconds, 1e9);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

}  // namespace

size_t shm_slot_bytes(size_t requested) {
  size_t bytes = requested;
  if (bytes == 0) {
    const char* env = std::getenv("CSERVE_SHM_COMM_BYTES");
    if (env && *env) {
      char* end = nullptr;
      errno = 0;
      const unsigned long long v = std::strtoull(env, &end, 10);
      if (errno != 0 || *end != '\0' || v == 0 || env[0] == '-')
        throw InvalidArgument(std::string("CSERVE_SHM_COMM_BYTES='") + env + "' is not a positive byte count");
      bytes = static_cast<size_t>(v);
    } else {
      bytes = kDefaultSlotBytes;
    }
  }
  return round_up(bytes, kPage);
}

ShmSegment::ShmSegment(const std::string& name, int rank, int size, double timeout_s, size_t slot_bytes)
    : name_(name), rank_(rank), size_(size), pid_namespace_(own_pid_namespace()) {
  const std::string bare = !name.empty() && name[0] == '/' ? name.substr(1) : name;
  if (bare.empty() || bare.size() > 200 || bare.find('/') != std::string::npos)
    throw InvalidArgument("shm communicator: the group name '" + name +
                          "' must be 1 to 200 characters without '/' (other than a leading one)");
  if (size < 1 || rank < 0 || rank >= size)
    throw InvalidArgument("shm communicator '" + name + "': rank " + std::to_string(rank) + " of " +
                          std::to_string(size) + " is not a rank of the group");
  if (!(timeout_s > 0)) throw InvalidArgument("shm communicator '" + name + "': timeout_s must be positive");
  path_ = "/" + bare;
  buffers_offset_ = round_up(kLinesOffset + sizeof(RankLine) * static_cast<size_t>(size), kPage);
  if (rank == 0) {
    create(timeout_s, shm_slot_bytes(slot_bytes));
    return;
  }
  const Clock::time_point deadline = deadline_after(timeout_s);
  while (!try_attach()) {
    if (Clock::now() >= deadline)
      throw CommTimeout("shm communicator '" + name_ + "': rank " + std::to_string(rank_) +
                        " found no live group segment within " + seconds_text(timeout_s) +
                        " (rank 0 did not create it)");
    std::this_thread::sleep_for(kAttachPoll);
  }
}

ShmSegment::~ShmSegment() {
  if (named_) shm_unlink(path_.c_str());
  unmap();
}

void ShmSegment::unmap() {
  if (base_) munmap(base_, total_bytes_);
  base_ = nullptr;
}

RankLine& ShmSegment::line(int rank) const {
  return *reinterpret_cast<RankLine*>(static_cast<char*>(base_) + kLinesOffset +
                                      sizeof(RankLine) * static_cast<size_t>(rank));
}

char* ShmSegment::slot(int half, int rank) const {
  return static_cast<char*>(base_) + buffers_offset_ +
         (static_cast<size_t>(half) * static_cast<size_t>(size_) + static_cast<size_t>(rank)) * slot_bytes_;
}

bool ShmSegment::rank_exited(int rank) const {
  const RankLine& l = line(rank);
  if (l.attached.load(std::memory_order_acquire) != 1) return false;
  if (l.pid <= 0 || l.pid_namespace == 0 || l.pid_namespace != pid_namespace_) return false;
  if (kill(l.pid, 0) != 0) return errno == ESRCH;
  // A process that exited but was not yet reaped by its parent is a zombie (state Z or X).
  std::ifstream stat("/proc/" + std::to_string(l.pid) + "/stat");
  std::string text;
  std::getline(stat, text);
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 >= text.size()) return false;
  const char state = text[paren + 2];
  return state == 'Z' || state == 'X';
}

void ShmSegment::create(double timeout_s, size_t slot_bytes) {
  slot_bytes_ = slot_bytes;
  total_bytes_ = buffers_offset_ + 2 * static_cast<size_t>(size_) * slot_bytes_;
  int fd = shm_open(path_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0 && errno == EEXIST) {  // left by a run that died before its ranks met: replace it
    shm_unlink(path_.c_str());
    fd = shm_open(path_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  }
  if (fd < 0) throw Error("shm communicator '" + name_ + "': shm_open(" + path_ + "): " + errno_text());
  named_ = true;
  // Reserve the memory now: a full /dev/shm is an error here rather than a SIGBUS later.
  const int rc = posix_fallocate(fd, 0, static_cast<off_t>(total_bytes_));
  if (rc != 0) {
    close(fd);
    shm_unlink(path_.c_str());
    named_ = false;
    throw OutOfMemory("shm communicator '" + name_ + "': cannot reserve " + std::to_string(total_bytes_) +
                      " bytes of shared memory (" + std::strerror(rc) +
                      "); enlarge /dev/shm or lower CSERVE_SHM_COMM_BYTES");
  }
  void* p = mmap(nullptr, total_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  const std::string mmap_error = p == MAP_FAILED ? errno_text() : "";
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(path_.c_str());
    named_ = false;
    throw Error("shm communicator '" + name_ + "': mmap: " + mmap_error);
  }
  base_ = p;
  // The file starts zeroed; construct the atomics in place, then publish with the magic.
  SegmentHeader* h = new (base_) SegmentHeader{};
  h->size = size_;
  h->version = kVersion;
  h->slot_bytes = slot_bytes_;
  h->total_bytes = total_bytes_;
  for (int r = 0; r < size_; ++r) new (&line(r)) RankLine{};
  line(0).pid = static_cast<int32_t>(getpid());
  line(0).pid_namespace = pid_namespace_;
  line(0).attached.store(1, std::memory_order_relaxed);
  h->magic.store(kSegmentMagic, std::memory_order_release);
  try {
    wait_for_ranks(timeout_s);
  } catch (...) {
    shm_unlink(path_.c_str());
    named_ = false;
    unmap();
    throw;
  }
  shm_unlink(path_.c_str());  // every rank has it mapped: nothing needs the name any more
  named_ = false;
}

void ShmSegment::wait_for_ranks(double timeout_s) {
  const Clock::time_point deadline = deadline_after(timeout_s);
  for (int r = 1; r < size_; ++r) {
    while (line(r).attached.load(std::memory_order_acquire) != 1) {
      if (Clock::now() >= deadline) {
        header().abort_word.store((uint64_t{1} << 32) | static_cast<uint64_t>(r + 1), std::memory_order_release);
        throw CommTimeout("shm communicator '" + name_ + "': rank " + std::to_string(r) + " of " +
                          std::to_string(size_) + " did not attach within " + seconds_text(timeout_s));
      }
      std::this_thread::sleep_for(kAttachPoll);
    }
  }
}

// One look for a live, initialized segment of this group; false: not (yet) there.
bool ShmSegment::try_attach() {
  const int fd = shm_open(path_.c_str(), O_RDWR, 0);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    throw Error("shm communicator '" + name_ + "': shm_open(" + path_ + "): " + errno_text());
  }
  struct stat st;
  const bool sized = fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) >= buffers_offset_;
  void* head = sized ? mmap(nullptr, buffers_offset_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  if (head == MAP_FAILED) {  // rank 0 is still sizing it
    close(fd);
    return false;
  }
  // Look at the header through a temporary mapping of the header and rank lines.
  base_ = head;
  total_bytes_ = buffers_offset_;
  const SegmentHeader& h = header();
  bool usable = h.magic.load(std::memory_order_acquire) == kSegmentMagic;
  if (usable && h.size != size_) {
    const int other = h.size;
    unmap();
    close(fd);
    throw InvalidArgument("shm communicator '" + name_ + "': the group has " + std::to_string(other) +
                          " ranks, rank " + std::to_string(rank_) + " expected " + std::to_string(size_));
  }
  // A segment whose creator has exited, or where this rank already is, is a stale one.
  usable = usable && static_cast<size_t>(st.st_size) == h.total_bytes && !rank_exited(0) &&
           line(rank_).attached.load(std::memory_order_acquire) == 0;
  const size_t total = usable ? h.total_bytes : 0;
  const size_t slot = usable ? h.slot_bytes : 0;
  unmap();
  if (!usable) {
    close(fd);
    return false;
  }
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  const std::string mmap_error = p == MAP_FAILED ? errno_text() : "";
  close(fd);
  if (p == MAP_FAILED) throw Error("shm communicator '" + name_ + "': mmap: " + mmap_error);
  base_ = p;
  total_bytes_ = total;
  slot_bytes_ = slot;
  uint32_t expected = 0;
  if (!line(rank_).attached.compare_exchange_strong(expected, 2, std::memory_order_acq_rel)) {
    unmap();  // another process claimed this rank in the meantime
    return false;
  }
  claim_line();
  return true;
}

void ShmSegment::claim_line() {
  RankLine& l = line(rank_);
  l.pid = static_cast<int32_t>(getpid());
  l.pid_namespace = pid_namespace_;
  l.attached.store(1, std::memory_order_release);
}

}  // namespace cserve::comm
