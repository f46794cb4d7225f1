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
  // Runs fn(begin, end, descending) over [0, n) as parallel_for does, with a thread's chunks
  // next to each other: the threads go in pairs, each pair over its share of [0, n), one taking
  // chunks upward from the share's start and the other downward from its end (descending: the
  // thread walks the chunk from end - 1 down) until they meet. A kernel that streams item after
  // item can prefetch the thread's next item across chunks, where parallel_for's next chunk is
  // anywhere.
  void parallel_walk(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, bool)>& fn);
  // Runs fn(thread_index) once on each of the num_threads() threads.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cserve
