// Owning, 64-byte aligned, zero-filled host memory. Move-only. Large buffers are
// anonymous mappings, so untouched pages (most of a fresh KV cache) cost no RAM.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <utility>

namespace cserve {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes);  // zero-filled; throws OutOfMemory
  ~Buffer() { release(); }
  Buffer(Buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), mapped_(std::exchange(o.mapped_, false)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      mapped_ = std::exchange(o.mapped_, false);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t size() const { return size_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
};

}  // namespace cserve
