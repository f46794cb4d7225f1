// Host work at load time (converting and packing weights) split over the host's cores: an 8B
// model has 8 billion values to convert, before any thread pool of the backend exists.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace cserve {

// fn(begin, end) over [0, n) rows on up to 16 threads (one call on this thread for few rows).
template <class F>
void parallel_rows(int64_t n, F fn) {
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  if (n < 64 || threads == 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) pool.emplace_back([&fn, n, t, threads] { fn(n * t / threads, n * (t + 1) / threads); });
  for (auto& th : pool) th.join();
}

}  // namespace cserve
