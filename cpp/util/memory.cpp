#include "util/memory.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "cserve/error.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace cserve {

namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// The value after `key` in a "key value [unit]" file (meminfo, memory.stat); -1 when absent.
int64_t read_keyed(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream s(line);
    std::string k;
    int64_t v = 0;
    if (s >> k >> v && k == key) return v;
  }
  return -1;
}

// A file holding one number ("max" and absent files: unlimited).
int64_t read_number(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v) || v == "max") return kUnlimited;
  try {
    return std::stoll(v);
  } catch (...) {
    return kUnlimited;
  }
}

// What the cgroup at `dir` (v2) or the v1 memory controller still lets this process take.
int64_t cgroup_headroom(const std::string& dir, bool v1) {
  const int64_t limit = read_number(dir + (v1 ? "/memory.limit_in_bytes" : "/memory.max"));
  if (limit >= (int64_t{1} << 60)) return kUnlimited;  // v1 writes "no limit" as a huge number
  const int64_t usage = read_number(dir + (v1 ? "/memory.usage_in_bytes" : "/memory.current"));
  if (usage == kUnlimited) return kUnlimited;
  // Page cache (but not shared memory) can be reclaimed to make room.
  const std::string stat = dir + "/memory.stat";
  const int64_t file = read_keyed(stat, v1 ? "total_cache" : "file");
  const int64_t shmem = read_keyed(stat, v1 ? "total_shmem" : "shmem");
  const int64_t reclaimable = std::max<int64_t>(0, file) - std::max<int64_t>(0, shmem);
  return std::max<int64_t>(0, limit - usage + std::max<int64_t>(0, reclaimable));
}

int64_t cgroup_available() {
  int64_t best = kUnlimited;
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("0::", 0) == 0) {  // cgroup v2: the process's group and every parent
      std::string path = line.substr(3);
      while (true) {
        best = std::min(best, cgroup_headroom("/sys/fs/cgroup" + (path == "/" ? "" : path), false));
        if (path.empty() || path == "/") break;
        const size_t slash = path.rfind('/');
        path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
      }
    }
  }
  best = std::min(best, cgroup_headroom("/sys/fs/cgroup/memory", true));
  return best;
}

void populate(char* begin, char* end, size_t page, int& error) {
  if (begin >= end) return;
  for (int tries = 0; tries < 100; ++tries) {
    if (madvise(begin, static_cast<size_t>(end - begin), MADV_POPULATE_WRITE) == 0) return;
    if (errno != EINTR && errno != EAGAIN) break;
  }
  if (errno != EINVAL) {  // EINVAL: a kernel without MADV_POPULATE_WRITE; touch every page instead
    error = errno;
    return;
  }
  for (volatile char* p = begin; p < end; p += page) *p = *p;
}

}  // namespace

int64_t host_available_memory_bytes() {
  int64_t kb = read_keyed("/proc/meminfo", "MemAvailable:");
  int64_t available = kb >= 0 ? kb * 1024 : kUnlimited;
  available = std::min(available, cgroup_available());
  if (available == kUnlimited) {  // no /proc: physical memory, as a last resort
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    available = pages > 0 && size > 0 ? static_cast<int64_t>(pages) * size : int64_t{4} << 30;
  }
  return available;
}

std::string format_gib(int64_t bytes) {
  std::ostringstream s;
  s.precision(2);
  s << std::fixed << static_cast<double>(bytes) / (1 << 30) << " GiB";
  return s.str();
}

void commit_host_memory(void* data, size_t bytes, const std::string& what, const std::string& hint) {
  if (data == nullptr || bytes == 0) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* begin = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(data) / page * page);
  char* end = static_cast<char*>(data) + bytes;
  // One thread per 256 MiB, up to 8: page zeroing is what takes the time.
  const size_t span = static_cast<size_t>(end - begin);
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n = std::max<size_t>(1, std::min<size_t>({hw, 8, span >> 28}));
  std::vector<int> errors(n, 0);
  if (n == 1) {
    populate(begin, end, page, errors[0]);
  } else {
    const size_t chunk = (span / n + page - 1) / page * page;
    std::vector<std::thread> threads;
    for (size_t i = 0; i < n; ++i) {
      char* lo = begin + std::min(span, i * chunk);
      char* hi = i + 1 == n ? end : begin + std::min(span, (i + 1) * chunk);
      threads.emplace_back(populate, lo, hi, page, std::ref(errors[i]));
    }
    for (auto& t : threads) t.join();
  }
  for (int e : errors)
    if (e != 0)
      throw OutOfMemory("could not commit " + format_gib(static_cast<int64_t>(bytes)) + " of host memory for the " +
                        what + " (" + std::strerror(e) + "; " + format_gib(host_available_memory_bytes()) +
                        " available now). " + hint);
}

}  // namespace cserve
