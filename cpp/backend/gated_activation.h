// The gated activations of an MLP, out = act(gate) * up (SwiGLU; GeGLU with GELU's tanh
// approximation, Gemma's gelu_pytorch_tanh).
#pragma once

namespace cserve {

enum class GatedActivation { Silu, GeluTanh };

}  // namespace cserve
