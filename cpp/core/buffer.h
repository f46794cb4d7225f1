// Owning memory, move-only. Buffer(bytes) is 64-byte aligned, zero-filled host memory;
// large buffers are anonymous mappings, so untouched pages (most of a fresh KV cache)
// cost no RAM. Buffer::adopt takes memory someone else allocated (a device backend's)
// together with the function that frees it.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <utility>

namespace cserve {

class Buffer {
 public:
  using FreeFn = void (*)(void* data, void* context);

  Buffer() = default;
  explicit Buffer(size_t bytes);  // zero-filled; throws OutOfMemory
  // Owns `data` (`size` bytes); free_fn(data, context) releases it.
  static Buffer adopt(void* data, size_t size, FreeFn free_fn, void* context = nullptr);
  ~Buffer() { release(); }
  Buffer(Buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        mapped_(std::exchange(o.mapped_, false)),
        free_fn_(std::exchange(o.free_fn_, nullptr)),
        free_context_(std::exchange(o.free_context_, nullptr)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      mapped_ = std::exchange(o.mapped_, false);
      free_fn_ = std::exchange(o.free_fn_, nullptr);
      free_context_ = std::exchange(o.free_context_, nullptr);
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
  FreeFn free_fn_ = nullptr;
  void* free_context_ = nullptr;
};

}  // namespace cserve
