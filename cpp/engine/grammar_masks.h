// The token masks of one step's grammar-constrained rows. They are filled on a worker thread
// while the forward pass runs, so a constrained batch costs little more than a free one; the
// sampler waits for them. After sampling, each grammar advances by its request's new token.
#pragma once
#include <cstdint>
#include <future>
#include <string>
#include <vector>

#include "sched/request.h"

namespace cserve {

class GrammarMasks {
 public:
  explicit GrammarMasks(int64_t vocab_size) : vocab_(vocab_size) {}
  ~GrammarMasks() { discard(); }

  // rows: the request of each logits row that samples (nullptr for rows that do not). Creates
  // the requests' grammar states on first use and starts filling the active ones' masks.
  void begin(const std::vector<Request*>& rows);
  // The mask of logits row `row` (waits for the fill), or nullptr where that row is free.
  const uint32_t* mask(size_t row);
  // Words of each mask, and the raw masks of the constrained rows for the backend's sampler.
  int64_t words() const { return (vocab_ + 31) / 32; }
  // Advances request r's grammar by `token`; sets ended when the grammar is complete, returns
  // an error message when it rejects the token (else empty).
  static std::string advance(Request& r, int32_t token, uint8_t& ended);

 private:
  void wait();
  void discard();  // drops a fill no one waited for (its step failed), and its error
  int64_t vocab_;
  std::vector<uint32_t> bits_;  // words() per constrained row
  std::vector<int32_t> slot_;   // per logits row: index into bits_ rows, -1 when free
  std::future<void> job_;
};

}  // namespace cserve
