#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "util/first_largest.h"
#include "util/vector_clones.h"

namespace cserve {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int32_t argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// NaN sorts below everything (as -inf), so comparisons stay a strict weak order.
float ordered(float v) { return v == v ? v : kNegInf; }

// The vocabulary-wide loops of sampling are CSERVE_VECTOR_CLONES (util/vector_clones.h); the
// maxima are max_skipping_nan's (util/first_largest.h), a running max being left scalar.
// NaN logits (a broken model) become -inf, impossible like masked ones.
CSERVE_VECTOR_CLONES void nan_to_neg_inf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] == x[i] ? x[i] : kNegInf;
}

CSERVE_VECTOR_CLONES void scale(float* x, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

// Probabilities are summed in blocks: the draw skips whole blocks and walks one.
constexpr int64_t kSumBlock = 256;

// sums[b] = the sum of x over block b, in double, eight running sums side by side (one running
// sum is a chain of dependent adds); returns their total.
CSERVE_VECTOR_CLONES double block_sums(const float* x, int64_t n, double* sums) {
  using Floats = float __attribute__((vector_size(32)));
  using Doubles = double __attribute__((vector_size(64)));
  double total = 0;
  for (int64_t begin = 0, b = 0; begin < n; begin += kSumBlock, ++b) {
    const int64_t end = std::min(n, begin + kSumBlock);
    Doubles lanes = {};
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      Floats v;
      std::memcpy(&v, x + i, sizeof v);
      lanes += __builtin_convertvector(v, Doubles);
    }
    double sum = 0;
    for (; i < end; ++i) sum += x[i];
    for (int j = 0; j < 8; ++j) sum += lanes[j];
    sums[b] = sum;
    total += sum;
  }
  return total;
}

// x[i] = exp(x[i] - shift) for x[i] - shift <= 0 (Cephes-style polynomial, ~2 ulp);
// exactly 0 below e^-87, so masked (-inf) logits stay impossible.
CSERVE_VECTOR_CLONES void exp_shifted(float* x, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] - shift;
    const bool negligible = v < -87.0f;
    v = negligible ? -87.0f : v;
    // Round to nearest by the 1.5 * 2^23 trick (vectorizes, unlike roundf).
    const float k = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = v - k * 0.693359375f + k * 2.12194440e-4f;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    poly = poly * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, 4);
    x[i] = negligible ? 0.0f : poly * scale;
  }
}

// Tokens outside the grammar's mask become impossible.
CSERVE_VECTOR_CLONES void apply_token_mask(float* x, int64_t n, const uint32_t* allowed) {
  for (int64_t i = 0; i < n; ++i) x[i] = (allowed[i >> 5] >> (i & 31)) & 1u ? x[i] : kNegInf;
}
}  // namespace

void Sampler::apply_processors(float* logits, const Request& r) const {
  const SamplingParams& p = r.params;
  if (!p.allowed_token_ids.empty()) {
    std::vector<float> keep(p.allowed_token_ids.size());
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = logits[p.allowed_token_ids[i]];
    std::fill(logits, logits + vocab_, kNegInf);
    for (size_t i = 0; i < keep.size(); ++i) logits[p.allowed_token_ids[i]] = keep[i];
  }
  for (const auto& [t, b] : p.logit_bias) logits[t] += b;
  if (static_cast<int64_t>(r.output_token_ids.size()) < p.min_tokens) {
    // EOS is masked even with ignore_eos, as vLLM adds it to the min_tokens stop set unconditionally.
    for (int64_t t : eos_) if (t >= 0 && t < vocab_) logits[t] = kNegInf;
    for (int32_t t : p.stop_token_ids) logits[t] = kNegInf;
  }
}

void Sampler::apply_penalties(float* logits, const Request& r) const {
  const SamplingParams& p = r.params;
  if (p.repetition_penalty != 1.0) {
    // Over prompt and output tokens, as vLLM: divide positive logits, multiply negative ones.
    std::vector<char> seen(static_cast<size_t>(vocab_), 0);
    for (int32_t t : r.all_token_ids) seen[t] = 1;
    float rp = static_cast<float>(p.repetition_penalty);
    for (int64_t t = 0; t < vocab_; ++t)
      if (seen[t]) logits[t] = logits[t] > 0 ? logits[t] / rp : logits[t] * rp;
  }
  if (p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : r.output_token_ids) ++counts[t];
    for (const auto& [t, c] : counts)
      logits[t] -= static_cast<float>(p.frequency_penalty * c + p.presence_penalty);
  }
}

int32_t Sampler::sample(float* logits, Request& r, const uint32_t* allowed) const {
  if (allowed) apply_token_mask(logits, vocab_, allowed);
  apply_processors(logits, r);
  apply_penalties(logits, r);
  const SamplingParams& p = r.params;
  if (p.greedy()) {
    // The first largest logit, as argmax over the row with NaN as -inf; read only, as greedy
    // needs nothing else. A row without a finite or +inf maximum takes the path below.
    const int64_t first = first_largest(logits, vocab_);
    if (first < vocab_) return static_cast<int32_t>(first);
  }
  // A row with no possible token (every logit masked or NaN) or an infinite one has no
  // distribution to draw from: it takes the first largest logit, as greedy does (token 0 when
  // everything is masked), which is what vLLM's samplers return there too.
  const float top = max_skipping_nan(logits, vocab_);
  nan_to_neg_inf(logits, vocab_);
  if (p.greedy() || !std::isfinite(top)) return static_cast<int32_t>(first_index_of(logits, vocab_, top));

  // A huge temperature must not scale masked (-inf) logits by 0 into NaN: 1/T stays a normal float.
  const float inv_t = std::max(static_cast<float>(1.0 / p.temperature), std::numeric_limits<float>::min());
  scale(logits, vocab_, inv_t);
  // The largest scaled logit: rounding is monotonic, so scaling by inv_t > 0 keeps the order.
  const float mx = top * inv_t;
  if (!std::isfinite(mx)) return argmax(logits, vocab_);
  // min_p and top_k as one floor on the (scaled) logits: min_p keeps p >= min_p * p_max,
  // top_k keeps logits >= the k-th largest (ties kept, as vLLM).
  float cutoff = kNegInf;
  if (p.min_p > 0) cutoff = mx + static_cast<float>(std::log(p.min_p));
  if (p.top_k > 0 && p.top_k < vocab_) {
    std::vector<float> copy(logits, logits + vocab_);
    std::nth_element(copy.begin(), copy.begin() + (p.top_k - 1), copy.end(), std::greater<float>());
    cutoff = std::max(cutoff, copy[static_cast<size_t>(p.top_k - 1)]);
  }
  // Candidates with their unnormalized probabilities.
  std::vector<std::pair<float, int32_t>> cand;
  if (cutoff == kNegInf && p.top_p >= 1.0) {
    // Plain temperature sampling: draw straight from the whole vocabulary, skipping whole
    // blocks of probabilities until u falls in one, then walking it.
    exp_shifted(logits, vocab_, mx);
    std::vector<double> sums(static_cast<size_t>((vocab_ + kSumBlock - 1) / kSumBlock));
    double u = std::generate_canonical<double, 53>(r.rng) * block_sums(logits, vocab_, sums.data());
    for (int64_t begin = 0, b = 0; begin < vocab_; begin += kSumBlock, ++b) {
      if (u >= sums[b]) {
        u -= sums[b];
        continue;
      }
      // Rounding may carry u past this block's end: the walk goes on in the next one.
      for (int64_t i = begin; i < std::min(vocab_, begin + kSumBlock); ++i) {
        if (logits[i] <= 0) continue;  // zero mass (masked, or below exp's range) is never drawn
        u -= logits[i];
        if (u < 0) return static_cast<int32_t>(i);
      }
    }
    // Rounding left u at or above the total: the last possible token (the largest logit's has
    // probability 1 before normalizing, so there is one).
    for (int64_t i = vocab_; i-- > 0;)
      if (logits[i] > 0) return static_cast<int32_t>(i);
    return argmax(logits, vocab_);
  }
  if (cutoff == kNegInf) {
    exp_shifted(logits, vocab_, mx);
    cand.reserve(static_cast<size_t>(vocab_));
    for (int64_t i = 0; i < vocab_; ++i)
      if (logits[i] > 0) cand.emplace_back(logits[i], static_cast<int32_t>(i));
  } else {
    std::vector<float> vals;
    for (int64_t i = 0; i < vocab_; ++i)
      if (logits[i] >= cutoff) {
        vals.push_back(logits[i]);
        cand.emplace_back(0.0f, static_cast<int32_t>(i));
      }
    exp_shifted(vals.data(), static_cast<int64_t>(vals.size()), mx);
    for (size_t i = 0; i < vals.size(); ++i) cand[i].first = vals[i];
  }
  double total = 0;
  auto by_prob = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  for (const auto& c : cand) total += c.first;
  if (p.top_p < 1.0) {
    // The smallest most-likely set holding top_p of the mass, in linear time: bucket the
    // candidates by 12 bits of their (positive) float bits, which order like the values;
    // buckets above the boundary are kept whole, and the boundary bucket is refined on the
    // next 12 bits, then sorted (by then it is small unless values are exactly equal).
    const double target = p.top_p * total;
    std::vector<std::pair<float, int32_t>> kept, edge;
    std::vector<double> mass(4096);
    double acc = 0;
    for (int shift : {19, 7}) {
      auto key = [shift](float v) {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        return (bits >> shift) & 0xFFFu;
      };
      std::fill(mass.begin(), mass.end(), 0.0);
      for (const auto& c : cand) mass[key(c.first)] += c.first;
      uint32_t boundary = 0;
      for (uint32_t b = 4096; b-- > 0;) {
        if (acc + mass[b] >= target) {
          boundary = b;
          break;
        }
        acc += mass[b];
      }
      edge.clear();
      for (const auto& c : cand) {
        uint32_t b = key(c.first);
        if (b > boundary) kept.push_back(c);
        else if (b == boundary) edge.push_back(c);
      }
      cand.swap(edge);
      if (cand.size() <= 64) break;
    }
    std::sort(cand.begin(), cand.end(), by_prob);
    for (const auto& c : cand) {
      if (acc >= target && !kept.empty()) break;
      kept.push_back(c);
      acc += c.first;
    }
    cand.swap(kept);
    total = acc;
  }
  double u = std::generate_canonical<double, 53>(r.rng) * total;
  double acc = 0;
  int32_t last = -1;
  for (const auto& c : cand) {
    if (c.first <= 0) continue;  // zero mass (masked, or below exp's range) is never drawn
    last = c.second;
    acc += c.first;
    if (u < acc) return c.second;
  }
  return last >= 0 ? last : argmax(logits, vocab_);
}

void Sampler::logprobs(const float* logits, int32_t token, int n, PositionLogprobs& out) const {
  float mx = kNegInf;
  for (int64_t i = 0; i < vocab_; ++i) mx = std::max(mx, ordered(logits[i]));
  double sum = 0;
  if (std::isfinite(mx))
    for (int64_t i = 0; i < vocab_; ++i) sum += std::exp(static_cast<double>(ordered(logits[i]) - mx));
  // No finite logit: every logprob is -inf (the server reports those as -9999).
  float lse = std::isfinite(mx) ? mx + static_cast<float>(std::log(sum)) : std::numeric_limits<float>::infinity();
  float chosen = ordered(logits[token]);
  int64_t rank = 1;
  for (int64_t i = 0; i < vocab_; ++i) rank += ordered(logits[i]) > chosen;
  out.token_ids.assign(1, token);
  out.logprobs.assign(1, chosen - lse);
  out.ranks.assign(1, rank);
  if (n <= 0) return;
  n = static_cast<int>(std::min<int64_t>(n, vocab_));
  std::vector<int32_t> idx(static_cast<size_t>(vocab_));
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    const float va = ordered(logits[a]), vb = ordered(logits[b]);
    return va != vb ? va > vb : a < b;
  };
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), better);
  for (int i = 0; i < n; ++i) {
    out.token_ids.push_back(idx[i]);
    out.logprobs.push_back(ordered(logits[idx[i]]) - lse);
    out.ranks.push_back(i + 1);
  }
}

}  // namespace cserve
