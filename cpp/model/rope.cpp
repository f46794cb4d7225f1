#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "cserve/error.h"

namespace cserve {

namespace {

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

double correction_dim(double rotations, int64_t dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (rotations * 2 * M_PI))) / (2 * std::log(base));
}

}  // namespace

std::vector<double> RotaryEmbedding::inv_freq_for(double base) const {
  std::vector<double> f(static_cast<size_t>(rotary_dim_ / 2));
  // transformers computes these in float32.
  for (size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(rotary_dim_)));
  return f;
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& c) : base_(c.rope_theta) {
  rotary_dim_ = static_cast<int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor);
  rotary_dim_ -= rotary_dim_ % 2;
  if (rotary_dim_ <= 0) throw InvalidArgument("rotary dimension must be positive");
  const RopeScaling& s = c.rope_scaling;
  original_max_ = s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : c.max_position_embeddings;
  inv_freq_ = inv_freq_for(base_);
  if (s.type == "default") {
  } else if (s.type == "linear") {
    for (double& f : inv_freq_) f /= s.factor;
  } else if (s.type == "dynamic") {
    dynamic_ = true;
    dynamic_factor_ = s.factor;
    original_max_ = c.max_position_embeddings;
  } else if (s.type == "llama3") {
    double low_wavelen = original_max_ / s.low_freq_factor;
    double high_wavelen = original_max_ / s.high_freq_factor;
    for (double& f : inv_freq_) {
      double wavelen = 2 * M_PI / f;
      double scaled = wavelen > low_wavelen ? f / s.factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        double smooth = (original_max_ / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        scaled = (1 - smooth) * scaled / s.factor + smooth * scaled;
      }
      f = scaled;
    }
  } else if (s.type == "yarn") {
    // A yarn config without a factor scales by max_position_embeddings / original.
    double factor = s.factor > 0 ? s.factor
                                 : static_cast<double>(c.max_position_embeddings) / static_cast<double>(original_max_);
    attention_factor_ = s.attention_factor > 0 ? s.attention_factor
                        : (s.mscale > 0 && s.mscale_all_dim > 0)
                            ? yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim)
                            : yarn_mscale(factor, 1.0);
    double low = correction_dim(s.beta_fast, rotary_dim_, base_, static_cast<double>(original_max_));
    double high = correction_dim(s.beta_slow, rotary_dim_, base_, static_cast<double>(original_max_));
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(rotary_dim_ - 1));
    if (low == high) high += 0.001;
    for (size_t i = 0; i < inv_freq_.size(); ++i) {
      double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      double extrapolation = 1 - ramp;
      double extra = inv_freq_[i];
      double inter = extra / factor;
      inv_freq_[i] = inter * (1 - extrapolation) + extra * extrapolation;
    }
  } else if (s.type == "longrope") {
    // transformers: inv_freq = 1 / (ext_factors * base ** (arange(0, dim, 2) / dim)) in float32,
    // the cos / sin times sqrt(1 + ln(factor) / ln(original)) when factor > 1.
    const size_t n = inv_freq_.size();
    if (s.short_factor.size() != n || s.long_factor.size() != n)
      throw InvalidArgument("longrope: short_factor and long_factor need " + std::to_string(n) + " values each");
    auto longrope = [&](const std::vector<double>& ext) {
      std::vector<double> f(n);
      for (size_t i = 0; i < n; ++i) {
        const float shape = static_cast<float>(2 * i) / static_cast<float>(rotary_dim_);
        const float pw = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(base_)), static_cast<double>(shape)));
        f[i] = 1.0f / (static_cast<float>(ext[i]) * pw);
      }
      return f;
    };
    inv_freq_ = longrope(s.short_factor);
    long_inv_freq_ = longrope(s.long_factor);
    attention_factor_ = s.attention_factor > 0 ? s.attention_factor
                        : s.factor <= 1.0     ? 1.0
                                              : std::sqrt(1 + std::log(s.factor) / std::log(static_cast<double>(original_max_)));
  } else {
    throw NotSupported("rope scaling type " + s.type + " is not supported");
  }
}

void RotaryEmbedding::compute(int64_t position, int64_t seq_len, float* cos, float* sin) const {
  const std::vector<double>* inv = &inv_freq_;
  std::vector<double> dyn;
  if (dynamic_ && seq_len > original_max_) {
    double base = base_ * std::pow(dynamic_factor_ * seq_len / original_max_ - (dynamic_factor_ - 1),
                                   static_cast<double>(rotary_dim_) / static_cast<double>(rotary_dim_ - 2));
    dyn = inv_freq_for(base);
    inv = &dyn;
  } else if (!long_inv_freq_.empty() && seq_len > original_max_) {
    inv = &long_inv_freq_;  // as transformers' longrope_frequency_update: seq_len = max(position) + 1
  }
  for (size_t i = 0; i < inv->size(); ++i) {
    // float32 angle, as transformers forms it.
    float angle = static_cast<float>((*inv)[i]) * static_cast<float>(position);
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle)) * attention_factor_);
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle)) * attention_factor_);
  }
}

}  // namespace cserve
