// A fixed pool of worker threads for kernels. The calling thread takes part,
// so a pool of N threads has N-1 workers. Workers spin briefly before sleeping
// because a decode step launches hundreds of short parallel regions.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

namespace cserve {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // 0 -> hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;
  // Runs fn(begin, end) over [0, n) split into chunks of at least `grain`
  // items; returns when every chunk is done. Not reentrant.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
  // Runs fn(thread_index) once on each of the num_threads() threads.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cserve
