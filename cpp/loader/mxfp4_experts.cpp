#include "loader/mxfp4_experts.h"

#include "core/quant.h"
#include "cserve/error.h"
#include "util/parallel_rows.h"

namespace cserve {

namespace {

constexpr int64_t kBlockBytes = kQBlock / 2;  // 32 FP4 values

const SafetensorsRawEntry& u8_tensor(const SafetensorsCheckpoint& ckpt, const std::string& name,
                                     const std::vector<int64_t>& shape) {
  const SafetensorsRawEntry* e = ckpt.raw(name);
  if (e == nullptr) {
    if (!ckpt.has(name)) ckpt.get(name);  // throws NotFound naming the tensor
    throw InvalidArgument(ckpt.dir() + ": tensor " + name + " must have dtype U8 (MXFP4)");
  }
  if (e->dtype != "U8") throw InvalidArgument(e->file + ": tensor " + name + " has dtype " + e->dtype + ", expected U8");
  if (e->shape != shape)
    throw InvalidArgument(e->file + ": tensor " + name + " has shape " + shape_text(e->shape) + ", expected " +
                          shape_text(shape));
  return *e;
}

// One kind of expert matrix (gate_up_proj or down_proj): blocks and scales of `rows` output
// features by `groups` blocks of 32 input features, per expert.
struct Mxfp4Matrix {
  std::string name;
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  int64_t rows = 0, groups = 0;

  Mxfp4Matrix(const SafetensorsCheckpoint& ckpt, const std::string& base, int64_t experts, int64_t rows_, int64_t cols)
      : name(base), rows(rows_), groups(cols / kQBlock) {
    if (cols % kQBlock != 0)
      throw InvalidArgument(base + ": MXFP4 needs input features in multiples of 32, got " + std::to_string(cols));
    blocks = u8_tensor(ckpt, base + "_blocks", {experts, rows, groups, kBlockBytes}).data;
    scales = u8_tensor(ckpt, base + "_scales", {experts, rows, groups}).data;
  }

  // Expert e's rows src_row(r) for r < count, blocks [first_group, first_group + num_groups), as QB8 rows.
  template <class SourceRow>
  QuantizedRows convert(int64_t e, int64_t count, SourceRow src_row, int64_t first_group, int64_t num_groups,
                        QuantScratch& scratch) const {
    const size_t expert_row0 = static_cast<size_t>(e * rows);
    for (int64_t r = 0; r < count; ++r) {  // checked first: the conversion below runs on worker threads
      const uint8_t* s = scales + (expert_row0 + static_cast<size_t>(src_row(r))) * static_cast<size_t>(groups);
      for (int64_t g = first_group; g < first_group + num_groups; ++g)
        if (!mxfp4_scale_supported(s[g]))
          throw InvalidArgument(name + "_scales: expert " + std::to_string(e) + " holds the E8M0 scale " +
                                std::to_string(s[g]) + (s[g] == 255 ? " (NaN)" : " (2^" + std::to_string(s[g] - 127) + ")") +
                                ", which cserve's blocks cannot hold (at most 251)");
    }
    QuantizedRows out;
    out.type = GgmlType::QB8;
    out.rows = count;
    out.cols = num_groups * kQBlock;
    out.row_stride = ggml_row_bytes(out.type, out.cols);
    scratch.rows.emplace_back(out.row_stride * static_cast<size_t>(count));
    uint8_t* dst = scratch.rows.back().as<uint8_t>();
    parallel_rows(count, [&](int64_t begin, int64_t end) {
      uint8_t u[kQBlock];
      for (int64_t r = begin; r < end; ++r) {
        const size_t row = expert_row0 + static_cast<size_t>(src_row(r));
        for (int64_t g = 0; g < num_groups; ++g) {
          const size_t block = row * static_cast<size_t>(groups) + static_cast<size_t>(first_group + g);
          const uint8_t* codes = blocks + block * kBlockBytes;
          for (int64_t j = 0; j < kBlockBytes; ++j)
            u[2 * j] = mxfp4_code(codes[j] & 0xF), u[2 * j + 1] = mxfp4_code(codes[j] >> 4);
          const float d = mxfp4_half_scale(scales[block]);
          write_qblock(out.type, dst + r * out.row_stride + g * ggml_block_bytes(out.type), d, -12.0f * d, u);
        }
      }
    });
    out.data = dst;
    return out;
  }
};

}  // namespace

Mxfp4Expert read_mxfp4_expert(const SafetensorsCheckpoint& ckpt, const std::string& prefix, int64_t expert,
                              const Mxfp4ExpertShape& s, QuantScratch& scratch) {
  const Mxfp4Matrix gate_up(ckpt, prefix + "gate_up_proj", s.num_experts, 2 * s.width, s.hidden);
  const Mxfp4Matrix down(ckpt, prefix + "down_proj", s.num_experts, s.hidden, s.width);
  if (s.first % kQBlock != 0 || s.count % kQBlock != 0)
    throw NotSupported(prefix + "down_proj: MXFP4 blocks hold 32 input features, which tensor parallelism cannot "
                                "split at feature " + std::to_string(s.first) + " (" + std::to_string(s.count) +
                       " per rank); use a tensor-parallel size that leaves each rank whole blocks");
  Mxfp4Expert out;
  const int64_t first = s.first;
  out.gate = gate_up.convert(expert, s.count, [&](int64_t r) { return 2 * (first + r); }, 0, gate_up.groups, scratch);
  out.up = gate_up.convert(expert, s.count, [&](int64_t r) { return 2 * (first + r) + 1; }, 0, gate_up.groups, scratch);
  out.down = down.convert(expert, s.hidden, [](int64_t r) { return r; }, first / kQBlock, s.count / kQBlock, scratch);
  return out;
}

}  // namespace cserve
