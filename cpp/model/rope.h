// Rotary position embedding tables with the scaling types transformers implements:
// default, linear, dynamic (NTK), llama3, yarn and longrope (Phi-3: short / long factors per
// frequency, the long ones for a sequence longer than original_max_position_embeddings).
#pragma once
#include <cstdint>
#include <vector>

#include "loader/model_config.h"

namespace cserve {

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);

  int64_t rotary_dim() const { return rotary_dim_; }
  // cos and sin rows ([rotary_dim / 2] each) for one token at `position` of a
  // sequence that holds seq_len tokens (dynamic scaling depends on it).
  void compute(int64_t position, int64_t seq_len, float* cos, float* sin) const;

 private:
  std::vector<double> inv_freq_for(double base) const;
  int64_t rotary_dim_;
  double base_;
  double attention_factor_ = 1.0;
  std::vector<double> inv_freq_;
  bool dynamic_ = false;
  double dynamic_factor_ = 1.0;
  int64_t original_max_ = 0;
  std::vector<double> long_inv_freq_;  // longrope: used when seq_len > original_max_
};

}  // namespace cserve
