#include "engine/rank_link.h"

#include <cstring>
#include <string>

#include "cserve/error.h"

namespace cserve {

namespace {

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

template <typename T>
void put_vec(std::vector<uint8_t>& out, const std::vector<T>& v) {
  put(out, static_cast<uint64_t>(v.size()));
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  out.insert(out.end(), p, p + v.size() * sizeof(T));
}

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& b) : b_(b) {}
  template <typename T>
  T get() {
    T v;
    take(&v, sizeof(T));
    return v;
  }
  template <typename T>
  std::vector<T> get_vec() {
    std::vector<T> v(static_cast<size_t>(get<uint64_t>()));
    take(v.data(), v.size() * sizeof(T));
    return v;
  }

 private:
  void take(void* dst, size_t n) {
    if (n == 0) return;  // an empty vector's data() may be null
    if (at_ + n > b_.size()) throw Error("tensor parallelism: a truncated step message from rank 0");
    std::memcpy(dst, b_.data() + at_, n);
    at_ += n;
  }
  const std::vector<uint8_t>& b_;
  size_t at_ = 0;
};

}  // namespace

void RankLink::send(std::vector<uint8_t>& bytes, bool untimed) {
  uint64_t size = bytes.size();
  comm_.broadcast(&size, sizeof size, 0, untimed);
  comm_.broadcast(bytes.data(), bytes.size(), 0);
}

void RankLink::send_forward(const ForwardBatch& b, const std::vector<std::pair<int32_t, int32_t>>& block_copies) {
  buf_.clear();
  put(buf_, Op::Forward);
  put_vec(buf_, b.token_ids);
  put_vec(buf_, b.token_seq_len);
  put_vec(buf_, b.logits_rows);
  const AttentionMetadata& m = b.attn;
  put(buf_, m.num_seqs);
  put(buf_, m.num_tokens);
  put(buf_, m.block_size);
  put(buf_, m.max_blocks_per_seq);
  put_vec(buf_, m.query_start);
  put_vec(buf_, m.seq_lens);
  put_vec(buf_, m.block_tables);
  put_vec(buf_, m.slot_mapping);
  put_vec(buf_, m.positions);
  put_vec(buf_, block_copies);
  send(buf_, false);
}

void RankLink::send_resize_kv_cache(int64_t num_blocks) {
  buf_.clear();
  put(buf_, Op::ResizeKV);
  put(buf_, num_blocks);
  send(buf_, /*untimed=*/true);  // the first message: the other ranks may still be loading
}

void RankLink::send_stop() {
  buf_.clear();
  put(buf_, Op::Stop);
  send(buf_, false);
}

RankLink::Message RankLink::receive() {
  uint64_t size = 0;
  comm_.broadcast(&size, sizeof size, 0, /*untimed=*/true);  // idle until rank 0's next step
  if (size > (uint64_t{1} << 34)) throw Error("tensor parallelism: a step message of " + std::to_string(size) + " bytes");
  buf_.resize(static_cast<size_t>(size));
  comm_.broadcast(buf_.data(), buf_.size(), 0);
  Reader r(buf_);
  Message msg;
  msg.op = r.get<Op>();
  if (msg.op == Op::ResizeKV) {
    msg.num_blocks = r.get<int64_t>();
  } else if (msg.op == Op::Forward) {
    ForwardBatch& b = msg.batch;
    b.token_ids = r.get_vec<int32_t>();
    b.token_seq_len = r.get_vec<int32_t>();
    b.logits_rows = r.get_vec<int32_t>();
    AttentionMetadata& m = b.attn;
    m.num_seqs = r.get<int32_t>();
    m.num_tokens = r.get<int32_t>();
    m.block_size = r.get<int32_t>();
    m.max_blocks_per_seq = r.get<int32_t>();
    m.query_start = r.get_vec<int32_t>();
    m.seq_lens = r.get_vec<int32_t>();
    m.block_tables = r.get_vec<int32_t>();
    m.slot_mapping = r.get_vec<int64_t>();
    m.positions = r.get_vec<int32_t>();
    msg.block_copies = r.get_vec<std::pair<int32_t, int32_t>>();
  } else if (msg.op != Op::Stop) {
    throw Error("tensor parallelism: an unknown step message from rank 0");
  }
  return msg;
}

}  // namespace cserve
