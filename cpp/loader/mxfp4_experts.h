// gpt-oss's experts as its checkpoints ship them (quant_method "mxfp4"), converted one expert at a
// time into cserve's QB8 rows (core/quant.h: each MXFP4 block is exactly one 8-bit block), so the
// experts stay quantized. Per layer, as transformers' convert_moe_packed_tensors reads them:
//   mlp.experts.gate_up_proj_blocks  uint8 [E][2I][H/32][16]  rows are output features, gate and
//                                     up interleaved (row 2i: gate i, row 2i + 1: up i)
//   mlp.experts.gate_up_proj_scales  uint8 E8M0 [E][2I][H/32]
//   mlp.experts.down_proj_blocks     uint8 [E][H][I/32][16]
//   mlp.experts.down_proj_scales     uint8 E8M0 [E][H][I/32]
// Byte j of a block holds value 2j in its low nibble and 2j + 1 in its high one (FP4 e2m1), the
// block's values scaled by 2^(scale - 127). The biases stay float tensors (gate_up_proj_bias,
// down_proj_bias).
#pragma once
#include <cstdint>
#include <string>

#include "loader/quantized_checkpoint.h"
#include "loader/safetensors.h"

namespace cserve {

// The experts' sizes, and this rank's share of the expert width: features [first, first + count).
struct Mxfp4ExpertShape {
  int64_t num_experts = 0, hidden = 0, width = 0;
  int64_t first = 0, count = 0;
};

// One expert's gate rows, up rows ([count][hidden] each) and down rows ([hidden][count]).
struct Mxfp4Expert {
  QuantizedRows gate, up, down;
};

// Expert `expert` of the tensors under `prefix` (e.g. "model.layers.0.mlp.experts."), converted
// into `scratch`. Throws NotFound for a missing tensor, InvalidArgument for a wrong dtype or shape
// and for a scale cserve cannot hold (255 is NaN; above 251 d * u overflows f32),
// NotSupported when this rank's share of down's input features is not whole blocks of 32.
Mxfp4Expert read_mxfp4_expert(const SafetensorsCheckpoint& ckpt, const std::string& prefix, int64_t expert,
                              const Mxfp4ExpertShape& shape, QuantScratch& scratch);

}  // namespace cserve
