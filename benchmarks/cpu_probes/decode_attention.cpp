// The paged attention of one decode step of SmolLM2-135M (30 layers of 9 query heads over 3 KV
// heads of 64, bf16 KV cache) for `seqs` sequences of `context` keys each, through cserve's CPU
// paged_attention() on 2 threads, with each sequence's blocks scattered over the cache as a
// long-running server leaves them: median and best of `reps` steps, and the KV bytes per step
// over the median time. Against a build tree:
//   g++ -O2 -std=c++17 -I cpp -I cpp/include benchmarks/cpu_probes/decode_attention.cpp \
//       BUILD/libcserve_backend.a BUILD/libcserve_core.a BUILD/libcserve_util.a -lpthread -ldl -o decode_attention
//   ./decode_attention 16 256 16 20      # seqs, context, block size, steps
// ONE=1 runs every layer over the first layer's cache (mostly in cache: the compute alone);
// SEQUENTIAL=1 gives each sequence consecutive blocks instead of scattered ones; HUGE=1 asks for
// transparent huge pages for the cache (the server leaves its KV cache to the system's default);
// SPREAD=N makes the cache N times the blocks in use (default 2); FLUSH=MB streams that many MB
// through both threads' caches before each layer, as a decode step's GEMMs do (not timed).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include <sys/mman.h>

#include "backend/cpu/kernels.h"
#include "core/buffer.h"
#include "util/thread_pool.h"

using namespace cserve;

int main(int argc, char** argv) {
  const int64_t seqs = argc > 1 ? std::atoll(argv[1]) : 16, context = argc > 2 ? std::atoll(argv[2]) : 256;
  const int64_t bs = argc > 3 ? std::atoll(argv[3]) : 16;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
  constexpr int64_t kLayers = 30, kHeads = 9, kKvHeads = 3, kDim = 64;
  const int64_t blocks_per_seq = (context + bs - 1) / bs;
  // Twice the blocks in use, so the scattered ids leave gaps as a busy cache does.
  const int64_t num_blocks = (getenv("SPREAD") ? atoi(getenv("SPREAD")) : 2) * seqs * blocks_per_seq;
  const size_t layer_bytes = static_cast<size_t>(num_blocks * kKvHeads * bs * kDim) * 2;
  std::vector<Buffer> mem;
  std::vector<KVCacheLayer> layers;
  for (int64_t l = 0; l < kLayers; ++l) {
    mem.emplace_back(2 * layer_bytes);
    if (getenv("HUGE")) madvise(mem.back().data(), mem.back().size(), MADV_HUGEPAGE);  // the server does not
    std::vector<uint16_t> fill(2 * layer_bytes / 2, 0x3c00);  // bf16 1/128: finite scores
    std::copy(fill.begin(), fill.end(), mem.back().as<uint16_t>());
    const std::vector<int64_t> shape{num_blocks, kKvHeads, bs, kDim};
    layers.push_back({{mem.back().data(), DType::BF16, shape}, {mem.back().as<char>() + layer_bytes, DType::BF16, shape}});
  }
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  if (!getenv("SEQUENTIAL")) std::shuffle(ids.begin(), ids.end(), std::mt19937(0));
  AttentionMetadata meta;
  meta.num_seqs = static_cast<int32_t>(seqs);
  meta.num_tokens = static_cast<int32_t>(seqs);
  meta.block_size = static_cast<int32_t>(bs);
  meta.max_blocks_per_seq = static_cast<int32_t>(blocks_per_seq);
  for (int64_t i = 0; i <= seqs; ++i) meta.query_start.push_back(static_cast<int32_t>(i));
  for (int64_t i = 0; i < seqs; ++i) {
    meta.seq_lens.push_back(static_cast<int32_t>(context));
    meta.positions.push_back(static_cast<int32_t>(context - 1));
    for (int64_t b = 0; b < blocks_per_seq; ++b) meta.block_tables.push_back(ids[i * blocks_per_seq + b]);
    meta.slot_mapping.push_back(int64_t{meta.block_tables.back()} * bs + (context - 1) % bs);
  }
  std::vector<float> q(static_cast<size_t>(seqs * kHeads * kDim), 0.01f), out(q.size());
  // Each sequence's new key and value, written by the call as the model's forward has it do.
  const std::vector<float> kv_new(static_cast<size_t>(seqs * kKvHeads * kDim), 0.0078125f);
  const cpu::NewKV fresh{kv_new.data(), kv_new.data(), kKvHeads * kDim};
  ThreadPool pool(2);
  // FLUSH=MB streams that many MB through the caches between layers, as a decode step's GEMMs do.
  const size_t flush_bytes = static_cast<size_t>(getenv("FLUSH") ? atoi(getenv("FLUSH")) : 0) << 20;
  std::vector<char> flush(flush_bytes, 1);
  volatile char sink = 0;
  double flush_s = 0;
  std::vector<double> times;
  for (int r = 0; r < reps + 2; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t l = 0; l < kLayers; ++l) {
      auto& layer = layers[getenv("ONE") ? 0 : l];
      if (flush_bytes) {
        const auto f0 = std::chrono::steady_clock::now();
        pool.parallel_for(static_cast<int64_t>(flush_bytes >> 16), 1, [&](int64_t b, int64_t e) {
          char acc = 0;
          for (size_t i = static_cast<size_t>(b) << 16; i < static_cast<size_t>(e) << 16; i += 64) acc ^= flush[i];
          sink = sink ^ acc;
        });
        flush_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
      }
      cpu::paged_attention(q.data(), kHeads * kDim, kHeads, layer, meta, 0.125f, 0, out.data(), pool, 0.0f, nullptr,
                           getenv("NOFRESH") ? nullptr : &fresh);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - flush_s;
    flush_s = 0;
    if (r >= 2) times.push_back(s);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const double bytes = 2.0 * kLayers * seqs * context * kKvHeads * kDim * 2;
  std::printf("%lld seqs x %lld keys, blocks of %lld: median %.3f ms, best %.3f ms per step, %.1f MB of KV: %.1f GB/s\n",
              static_cast<long long>(seqs), static_cast<long long>(context), static_cast<long long>(bs), med * 1e3,
              times[0] * 1e3, bytes / 1e6, bytes / med / 1e9);
  return 0;
}
