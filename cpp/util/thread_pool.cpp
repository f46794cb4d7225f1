// ThreadPool: persistent workers that spin for a short while after each job
// and then sleep on a condition variable. A job is published by bumping a
// generation counter under the mutex, so a worker that is about to sleep
// either sees the new generation or is woken by the notify (no lost wakeups).
#include "util/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define CSERVE_CPU_RELAX() _mm_pause()
#else
#define CSERVE_CPU_RELAX() std::this_thread::yield()
#endif

namespace cserve {

namespace {
// A worker spins after a job, then keeps polling while yielding its core to whatever else wants
// it (the server's event loop, other replicas), then blocks. Polling outlasts the host's work
// between two decode steps (sampling, scheduling: ~1-1.5 ms at 16 streams), since waking a
// blocked worker for the next step's first region costs tens of microseconds in a VM (16-stream
// bf16 decode step 20.5-21.5 -> 19.7-20.5 ms against blocking after 100 us).
constexpr auto kSpinTime = std::chrono::microseconds(100);
constexpr auto kPollTime = std::chrono::microseconds(2000);
// Set while a thread runs a job of some pool: nested parallel regions run inline.
thread_local bool t_in_pool_job = false;
}  // namespace

struct ThreadPool::Impl {
  int num_threads = 1;
  std::vector<std::thread> workers;

  std::mutex mu;
  std::condition_variable cv;
  int num_sleeping = 0;  // guarded by mu
  bool stop = false;     // guarded by mu

  std::atomic<uint64_t> generation{0};  // written under mu
  std::atomic<int> pending{0};          // workers still running the current job
  const std::function<void(int)>* job = nullptr;

  std::mutex error_mu;
  std::exception_ptr error;

  void worker_loop(int index);
  void run(const std::function<void(int)>& fn);
  void record_error() {
    std::lock_guard<std::mutex> lk(error_mu);
    if (!error) error = std::current_exception();
  }
};

void ThreadPool::Impl::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin, poll, then sleep, until a new generation (or stop) is published.
    auto spin_start = std::chrono::steady_clock::now();
    uint32_t spins = 0;
    while (generation.load(std::memory_order_acquire) == seen) {
      CSERVE_CPU_RELAX();
      if ((++spins & 63u) != 0) continue;
      const auto waited = std::chrono::steady_clock::now() - spin_start;
      if (waited < kSpinTime) continue;
      if (waited < kPollTime) {
        std::this_thread::yield();
        continue;
      }
      std::unique_lock<std::mutex> lk(mu);
      if (stop) return;
      ++num_sleeping;
      cv.wait(lk, [&] { return stop || generation.load(std::memory_order_relaxed) != seen; });
      --num_sleeping;
      if (stop) return;
      break;
    }
    {
      // Checking stop needs the lock only when the generation moved without a job.
      if (job == nullptr) {
        std::lock_guard<std::mutex> lk(mu);
        if (stop) return;
      }
    }
    seen = generation.load(std::memory_order_acquire);
    if (job == nullptr) return;
    t_in_pool_job = true;
    try {
      (*job)(index);
    } catch (...) {
      record_error();
    }
    t_in_pool_job = false;
    pending.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Impl::run(const std::function<void(int)>& fn) {
  if (num_threads == 1 || t_in_pool_job) {
    for (int i = 0; i < num_threads; ++i) fn(i);
    return;
  }
  job = &fn;
  pending.store(num_threads - 1, std::memory_order_relaxed);
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu);
    generation.fetch_add(1, std::memory_order_release);
    wake = num_sleeping > 0;
  }
  if (wake) cv.notify_all();

  t_in_pool_job = true;
  try {
    fn(0);
  } catch (...) {
    record_error();
  }
  t_in_pool_job = false;

  uint32_t spins = 0;
  while (pending.load(std::memory_order_acquire) != 0) {
    CSERVE_CPU_RELAX();
    if (++spins > 4096) std::this_thread::yield();
  }
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lk(error_mu);
    e = std::exchange(error, nullptr);
  }
  if (e) std::rethrow_exception(e);
}

ThreadPool::ThreadPool(int num_threads) : impl_(std::make_unique<Impl>()) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  impl_->num_threads = num_threads;
  // The job pointer is non-null while workers run; give it a valid no-op so the
  // "job == nullptr means shutdown" check in worker_loop only fires on stop.
  static const std::function<void(int)> kNoop = [](int) {};
  impl_->job = &kNoop;
  impl_->workers.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) {
    impl_->workers.emplace_back([impl = impl_.get(), i] { impl->worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
    impl_->job = nullptr;
    impl_->generation.fetch_add(1, std::memory_order_release);
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) t.join();
}

int ThreadPool::num_threads() const { return impl_->num_threads; }

void ThreadPool::run_on_all(const std::function<void(int)>& fn) { impl_->run(fn); }

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t threads = impl_->num_threads;
  const int64_t max_chunks = (n + grain - 1) / grain;
  if (max_chunks <= 1 || threads <= 1 || t_in_pool_job) {
    fn(0, n);
    return;
  }
  // Guided self-scheduling: each chunk is 1 / (2 x threads) of what is left, at least `grain`,
  // taken from a shared counter. Large chunks first (long streams for the prefetchers), small
  // ones at the end, so the threads finish together even when the VM or memory contention slows
  // one of them: the region ends when the work does, not a chunk later. (Four equal chunks per
  // thread left half a chunk of idling per region: the 16-stream decode step's GEMMs 15.9 ->
  // 15.0 ms, benchmarks/cpu_probes/decode_gemms.cpp.)
  std::atomic<int64_t> next{0};
  impl_->run([&](int) {
    int64_t begin = next.load(std::memory_order_relaxed);
    while (begin < n) {
      const int64_t size = std::max(grain, (n - begin) / (2 * threads));
      if (!next.compare_exchange_weak(begin, begin + size, std::memory_order_relaxed)) continue;
      fn(begin, std::min(n, begin + size));
      begin = next.load(std::memory_order_relaxed);
    }
  });
}

void ThreadPool::parallel_walk(int64_t n, int64_t grain,
                               const std::function<void(int64_t, int64_t, bool)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t threads = impl_->num_threads;
  if (n <= grain || threads <= 1 || t_in_pool_job || n > int64_t{UINT32_MAX}) {
    fn(0, n, false);
    return;
  }
  // Per pair: the next item up (high half) and the end of what is left (low half) in one word,
  // so that a claim from either end is one compare-and-swap.
  struct alignas(64) Ends {
    std::atomic<uint64_t> word;
  };
  const int64_t pairs = (threads + 1) / 2;
  std::vector<Ends> ends(static_cast<size_t>(pairs));
  for (int64_t s = 0; s < pairs; ++s) {  // shares in proportion to the pair's threads
    const uint64_t lo = n * 2 * s / threads, hi = n * std::min(2 * s + 2, threads) / threads;
    ends[s].word.store(lo << 32 | hi, std::memory_order_relaxed);
  }
  impl_->run([&](int t) {
    std::atomic<uint64_t>& word = ends[t / 2].word;
    const bool down = t % 2 == 1;
    const bool alone = 2 * (t / 2) + 1 >= threads;  // the last of an odd count takes its share whole
    uint64_t cur = word.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t lo = cur >> 32, hi = cur & 0xffffffffu;
      if (lo >= hi) return;
      // As parallel_for: a quarter of what is left (half of the thread's half), at least grain.
      const uint64_t take = alone ? hi - lo
                                  : std::min<uint64_t>(hi - lo, std::max<uint64_t>(grain, (hi - lo) / 4));
      const uint64_t next = down ? (lo << 32 | (hi - take)) : ((lo + take) << 32 | hi);
      if (!word.compare_exchange_weak(cur, next, std::memory_order_relaxed)) continue;
      if (down) fn(static_cast<int64_t>(hi - take), static_cast<int64_t>(hi), true);
      else fn(static_cast<int64_t>(lo), static_cast<int64_t>(lo + take), false);
      cur = word.load(std::memory_order_relaxed);
    }
  });
}

}  // namespace cserve
