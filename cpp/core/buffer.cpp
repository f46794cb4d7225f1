// Buffer: 64-byte aligned, zero-filled host allocation, or adopted memory with its deleter.
#include "core/buffer.h"

#include <cstdint>
#include <cstring>
#include <string>

#include <sys/mman.h>

#include "cserve/error.h"

namespace cserve {

namespace {
constexpr size_t kAlignment = 64;
constexpr size_t kMapThreshold = size_t{2} << 20;  // mmap at and above 2 MiB
}

Buffer::Buffer(size_t bytes) {
  if (bytes == 0) return;
  if (bytes > SIZE_MAX - (kAlignment - 1)) {
    throw OutOfMemory("failed to allocate " + std::to_string(bytes) + " bytes of host memory");
  }
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded >= kMapThreshold) {
    void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw OutOfMemory("failed to allocate " + std::to_string(bytes) + " bytes of host memory");
    data_ = p;
    size_ = bytes;
    mapped_ = true;
    return;
  }
  data_ = std::aligned_alloc(kAlignment, rounded);
  if (data_ == nullptr) {
    throw OutOfMemory("failed to allocate " + std::to_string(bytes) + " bytes of host memory");
  }
  std::memset(data_, 0, rounded);
  size_ = bytes;
}

Buffer Buffer::adopt(void* data, size_t size, FreeFn free_fn, void* context) {
  Buffer b;
  b.data_ = data;
  b.size_ = size;
  b.free_fn_ = free_fn;
  b.free_context_ = context;
  return b;
}

void Buffer::release() noexcept {
  if (!data_) return;
  if (free_fn_) free_fn_(data_, free_context_);
  else if (mapped_) munmap(data_, (size_ + kAlignment - 1) / kAlignment * kAlignment);
  else std::free(data_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = false;
  free_fn_ = nullptr;
  free_context_ = nullptr;
}

}  // namespace cserve
