// Host memory: how much this process can still take, and committing (pre-faulting) a mapping
// so that its pages are resident from the start rather than on first write.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cserve {

// What the process can allocate now without pushing anything out: MemAvailable from
// /proc/meminfo, lowered to the headroom under its cgroup's memory limit where one is set
// (memory.max less the non-reclaimable part of memory.current, up the hierarchy).
int64_t host_available_memory_bytes();

// "1.50 GiB".
std::string format_gib(int64_t bytes);

// Makes every page of [data, data + bytes) resident and writable now (MADV_POPULATE_WRITE,
// or a write per page on kernels without it), in parallel for large ranges. Throws OutOfMemory
// naming `what`, the size and `hint` when the kernel cannot commit it.
void commit_host_memory(void* data, size_t bytes, const std::string& what, const std::string& hint);

}  // namespace cserve
