#include "loader/quantized_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/dtype.h"
#include "cserve/error.h"
#include "util/parallel_rows.h"

namespace cserve {

namespace {

// Tensors of one module, fetched and checked by name.
class ModuleTensors {
 public:
  ModuleTensors(const SafetensorsCheckpoint& ckpt, const std::string& module) : ckpt_(ckpt), module_(module) {}

  bool has(const std::string& suffix) const { return ckpt_.has(module_ + "." + suffix); }

  // An I32 tensor of the given shape.
  const int32_t* ints(const std::string& suffix, const std::vector<int64_t>& shape) const {
    const SafetensorsRawEntry& e = raw(suffix, "I32");
    check_shape(e.file, suffix, e.shape, shape);
    return reinterpret_cast<const int32_t*>(e.data);
  }
  const SafetensorsRawEntry& raw(const std::string& suffix, const std::string& dtype) const {
    const std::string name = module_ + "." + suffix;
    const SafetensorsRawEntry* e = ckpt_.raw(name);
    if (e == nullptr) {
      if (!ckpt_.has(name)) ckpt_.get(name);  // throws NotFound naming the tensor
      throw InvalidArgument(ckpt_.dir() + ": tensor " + name + " must have dtype " + dtype);
    }
    if (e->dtype != dtype)
      throw InvalidArgument(e->file + ": tensor " + name + " has dtype " + e->dtype + ", expected " + dtype);
    return *e;
  }
  // A float tensor (F32, F16 or BF16) of the given shape; scalars may be [] or [1].
  Tensor floats(const std::string& suffix, const std::vector<int64_t>& shape) const {
    const SafetensorsEntry& e = ckpt_.get(module_ + "." + suffix);
    std::vector<int64_t> got = e.view.shape;
    if (shape == std::vector<int64_t>{1} && got.empty()) got = {1};
    check_shape(e.file, suffix, got, shape);
    return e.view;
  }
  Tensor floats_any(const std::string& suffix) const { return ckpt_.get(module_ + "." + suffix).view; }
  void check_shape(const std::string& file, const std::string& suffix, const std::vector<int64_t>& got,
                   const std::vector<int64_t>& want) const {
    if (got != want)
      throw InvalidArgument(file + ": tensor " + module_ + "." + suffix + " has shape " + shape_text(got) +
                            ", expected " + shape_text(want));
  }
  const std::string& module() const { return module_; }

 private:
  const SafetensorsCheckpoint& ckpt_;
  std::string module_;
};

float float_at(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
    default: return fp8_to_f32(static_cast<const uint8_t*>(t.data)[i], t.dtype);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }


// One int format's view of a weight w[n][k] = s[group][n] * (u[n][k] - z[group][n]): the code,
// the group of each input feature, and each group's scale and zero for an output feature.
struct IntWeight {
  int bits = 4;
  int64_t n = 0, k = 0, group_size = 0;  // group_size 0: one group (channel-wise)
  int64_t num_groups = 1;
  // Codes: packed along k (GPTQ: [k / pf][n]; compressed-tensors: [n][k / pf]) or along n (AWQ).
  enum class Layout { KPackedRows, KPackedCols, NPackedAwq } layout = Layout::KPackedRows;
  const int32_t* codes = nullptr;
  const int32_t* g_idx = nullptr;  // k entries, or null: feature kk is in group kk / group_size
  Tensor scales;                   // [groups][n] (AWQ, GPTQ) or [n][groups] (compressed-tensors)
  bool scales_by_row = false;      // [n][groups]
  // Zeros: packed [groups][n / pf] (AWQ order or sequential), or plain / packed-along-n [n][groups]
  // (compressed-tensors), or none (symmetric: zero_offset only).
  enum class Zeros { None, GptqPacked, AwqPacked, RowsPlain, RowsPackedN } zeros = Zeros::None;
  const int32_t* zero_data = nullptr;
  float zero_offset = 0.0f;        // added to the stored zero (GPTQ v1: 1; compressed-tensors: 2^(bits-1))

  int pack() const { return 32 / bits; }
  uint32_t mask() const { return (1u << bits) - 1u; }
  static int awq_shift(int64_t c) {  // AWQ packs columns 0,2,4,6,1,3,5,7 into nibbles 0..7
    static constexpr int kNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    return 4 * kNibble[c % 8];
  }
  uint32_t code(int64_t nn, int64_t kk) const {
    const int pf = pack();
    uint32_t word;
    int shift;
    switch (layout) {
      case Layout::KPackedRows: word = static_cast<uint32_t>(codes[(kk / pf) * n + nn]); shift = bits * static_cast<int>(kk % pf); break;
      case Layout::KPackedCols: word = static_cast<uint32_t>(codes[nn * (k / pf) + kk / pf]); shift = bits * static_cast<int>(kk % pf); break;
      default: word = static_cast<uint32_t>(codes[kk * (n / pf) + nn / pf]); shift = awq_shift(nn); break;
    }
    return (word >> shift) & mask();
  }
  int64_t group(int64_t kk) const {
    if (g_idx) return g_idx[kk];
    return group_size == 0 ? 0 : kk / group_size;
  }
  float scale(int64_t g, int64_t nn) const { return float_at(scales, scales_by_row ? nn * num_groups + g : g * n + nn); }
  float zero(int64_t g, int64_t nn) const {
    const int pf = pack();
    uint32_t z = 0;
    switch (zeros) {
      case Zeros::None: break;
      case Zeros::GptqPacked: z = (static_cast<uint32_t>(zero_data[g * (n / pf) + nn / pf]) >> (bits * (nn % pf))) & mask(); break;
      case Zeros::AwqPacked: z = (static_cast<uint32_t>(zero_data[g * (n / pf) + nn / pf]) >> awq_shift(nn)) & mask(); break;
      case Zeros::RowsPlain: return zero_offset + static_cast<float>(zero_data[nn * num_groups + g]);
      case Zeros::RowsPackedN: {
        const uint32_t word = static_cast<uint32_t>(zero_data[(nn / pf) * num_groups + g]);
        // Packed signed values: stored with the same 2^(bits-1) offset as the codes.
        return static_cast<float>(static_cast<int>((word >> (bits * (nn % pf))) & mask()) - (1 << (bits - 1))) +
               zero_offset;
      }
    }
    return zero_offset + static_cast<float>(z);
  }
};

IntWeight awq_weight(const ModuleTensors& t, const QuantizationConfig& q, int64_t n, int64_t k) {
  IntWeight w;
  w.bits = 4;
  w.n = n, w.k = k, w.group_size = q.group_size;
  if (n % 8 != 0) throw NotSupported(t.module() + ": AWQ needs output features in multiples of 8");
  w.num_groups = q.group_size ? ceil_div(k, q.group_size) : 1;
  w.layout = IntWeight::Layout::NPackedAwq;
  w.codes = t.ints("qweight", {k, n / 8});
  w.zeros = IntWeight::Zeros::AwqPacked;
  w.zero_data = t.ints("qzeros", {w.num_groups, n / 8});
  w.scales = t.floats("scales", {w.num_groups, n});
  return w;
}

IntWeight gptq_weight(const ModuleTensors& t, const QuantizationConfig& q, int64_t n, int64_t k) {
  IntWeight w;
  w.bits = q.bits;
  w.n = n, w.k = k, w.group_size = q.group_size;
  const int pf = w.pack();
  if (k % pf != 0 || n % pf != 0)
    throw NotSupported(t.module() + ": GPTQ needs both dimensions in multiples of " + std::to_string(pf));
  w.num_groups = q.group_size ? ceil_div(k, q.group_size) : 1;
  w.layout = IntWeight::Layout::KPackedRows;
  w.codes = t.ints("qweight", {k / pf, n});
  w.scales = t.floats("scales", {w.num_groups, n});
  if (t.has("g_idx")) w.g_idx = t.ints("g_idx", {k});
  if (q.zero_point) {
    w.zeros = IntWeight::Zeros::GptqPacked;
    w.zero_data = t.ints("qzeros", {w.num_groups, n / pf});
    w.zero_offset = q.gptq_v2_zeros ? 0.0f : 1.0f;  // v1 checkpoints store zero - 1
  } else {
    w.zero_offset = static_cast<float>(1 << (q.bits - 1));  // symmetric: the midpoint, as Marlin reads it
  }
  return w;
}

IntWeight compressed_tensors_weight(const ModuleTensors& t, const QuantizationConfig& q, int64_t n, int64_t k) {
  IntWeight w;
  w.bits = q.bits;
  w.n = n, w.k = k, w.group_size = q.group_size;
  const int pf = w.pack();
  if (k % pf != 0) throw NotSupported(t.module() + ": pack-quantized needs input features in multiples of " + std::to_string(pf));
  w.num_groups = q.group_size ? ceil_div(k, q.group_size) : 1;
  w.layout = IntWeight::Layout::KPackedCols;
  w.codes = t.ints("weight_packed", {n, k / pf});
  w.scales = t.floats("weight_scale", {n, w.num_groups});
  w.scales_by_row = true;
  if (t.has("weight_g_idx")) w.g_idx = t.ints("weight_g_idx", {k});
  w.zero_offset = static_cast<float>(1 << (q.bits - 1));  // codes are stored as value + 2^(bits-1)
  if (q.zero_point) {
    const SafetensorsRawEntry& z = t.raw("weight_zero_point", "I32");
    if (z.shape == std::vector<int64_t>{n, w.num_groups}) {
      w.zeros = IntWeight::Zeros::RowsPlain;
    } else {
      t.check_shape(z.file, "weight_zero_point", z.shape, {ceil_div(n, pf), w.num_groups});
      w.zeros = IntWeight::Zeros::RowsPackedN;
    }
    w.zero_data = reinterpret_cast<const int32_t*>(z.data);
  }
  return w;
}

// The columns of the share in the order that makes each block of 32 one group (sorted by group,
// stably); empty when that is the natural order. Throws NotSupported when no order does.
std::vector<int32_t> share_k_order(const IntWeight& w, const WeightShare& s, const std::string& module) {
  std::vector<int32_t> order(static_cast<size_t>(s.col_count));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t j = 0; j < s.col_count; ++j) {
    const int64_t g = w.group(s.col_begin + j);
    if (g < 0 || g >= w.num_groups)
      throw InvalidArgument(module + ".g_idx: group " + std::to_string(g) + " out of range (" +
                            std::to_string(w.num_groups) + " groups)");
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return w.group(s.col_begin + a) < w.group(s.col_begin + b); });
  for (int64_t b = 0; b < s.col_count / kQBlock; ++b) {
    const int64_t g = w.group(s.col_begin + order[b * kQBlock]);
    for (int64_t j = 1; j < kQBlock; ++j)
      if (w.group(s.col_begin + order[b * kQBlock + j]) != g)
        throw NotSupported(module + ": the quantization groups of input features " + std::to_string(s.col_begin) +
                           ".." + std::to_string(s.col_begin + s.col_count - 1) +
                           (s.col_count < s.k ? " (this tensor-parallel rank's share)" : "") +
                           " do not fall into whole blocks of 32; use a tensor-parallel size that splits "
                           "the groups evenly");
  }
  bool natural = true;
  for (int64_t j = 0; j < s.col_count && natural; ++j) natural = order[j] == j;
  if (natural) order.clear();
  return order;
}

QuantizedRows int_rows(const IntWeight& w, const WeightShare& s, const std::string& module, QuantScratch& scratch) {
  QuantizedRows out;
  out.type = w.bits == 4 ? GgmlType::QB4 : GgmlType::QB8;
  out.rows = s.row_count;
  out.cols = s.col_count;
  out.row_stride = ggml_row_bytes(out.type, s.col_count);
  std::vector<int32_t> order = share_k_order(w, s, module);
  const int64_t blocks = s.col_count / kQBlock, block_bytes = ggml_block_bytes(out.type);
  scratch.rows.emplace_back(out.row_stride * static_cast<size_t>(s.row_count));
  uint8_t* dst = scratch.rows.back().as<uint8_t>();
  parallel_rows(s.row_count, [&](int64_t begin, int64_t end) {
    uint8_t u[kQBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t nn = s.row_begin + r;
      for (int64_t b = 0; b < blocks; ++b) {
        auto col = [&](int64_t j) { return s.col_begin + (order.empty() ? b * kQBlock + j : order[b * kQBlock + j]); };
        for (int64_t j = 0; j < kQBlock; ++j) u[j] = static_cast<uint8_t>(w.code(nn, col(j)));
        const int64_t g = w.group(col(0));
        const float d = w.scale(g, nn);
        write_qblock(out.type, dst + r * out.row_stride + b * block_bytes, d, -d * w.zero(g, nn), u);
      }
    }
  });
  out.data = dst;
  if (!order.empty()) {
    scratch.orders.push_back(std::move(order));
    out.k_order = scratch.orders.back().data();
  }
  return out;
}

// Requantizes float values to one QB8 block: 8-bit codes over [min, max] of the block.
void write_requantized(uint8_t* dst, const float* v) {
  float lo = v[0], hi = v[0];
  for (int64_t j = 1; j < kQBlock; ++j) lo = std::min(lo, v[j]), hi = std::max(hi, v[j]);
  const float d = (hi - lo) / 255.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
  uint8_t u[kQBlock];
  for (int64_t j = 0; j < kQBlock; ++j)
    u[j] = static_cast<uint8_t>(std::clamp(std::lrintf((v[j] - lo) * inv), 0L, 255L));
  write_qblock(GgmlType::QB8, dst, d, lo, u);
}

// fp8 weights (checkpoint or online) as QB8 rows: value(nn, kk) in f32, requantized per block.
template <class Value>
QuantizedRows requantized_rows(const WeightShare& s, QuantScratch& scratch, Value&& value) {
  QuantizedRows out;
  out.type = GgmlType::QB8;
  out.rows = s.row_count;
  out.cols = s.col_count;
  out.row_stride = ggml_row_bytes(out.type, s.col_count);
  scratch.rows.emplace_back(out.row_stride * static_cast<size_t>(s.row_count));
  uint8_t* dst = scratch.rows.back().as<uint8_t>();
  parallel_rows(s.row_count, [&](int64_t begin, int64_t end) {
    float v[kQBlock];
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < s.col_count / kQBlock; ++b) {
        for (int64_t j = 0; j < kQBlock; ++j) v[j] = value(s.row_begin + r, s.col_begin + b * kQBlock + j);
        write_requantized(dst + r * out.row_stride + b * ggml_block_bytes(out.type), v);
      }
  });
  out.data = dst;
  return out;
}

QuantizedRows fp8_rows(const ModuleTensors& t, const QuantizationConfig& q, const WeightShare& s,
                       QuantScratch& scratch) {
  const int64_t n = s.n, k = s.k;
  const SafetensorsRawEntry& e = t.raw("weight", "F8_E4M3");
  t.check_shape(e.file, "weight", e.shape, {n, k});
  const uint8_t* codes = e.data;
  // Scale of (nn, kk): block-wise [n / bn][k / bk], per output channel [n][1], or per tensor.
  const bool ct = q.method == "compressed-tensors";
  const std::string scale_name = !ct && !q.weight_block_size.empty() ? "weight_scale_inv" : "weight_scale";
  int64_t bn = n, bk = k;
  Tensor scale;
  if (!q.weight_block_size.empty()) {
    bn = q.weight_block_size[0], bk = q.weight_block_size[1];
    scale = t.floats(scale_name, {ceil_div(n, bn), ceil_div(k, bk)});
  } else {  // one scale per tensor ([] or [1]) or per output channel ([n] or [n, 1])
    scale = t.floats_any(scale_name);
    if (scale.numel() == n && n != 1) {
      bn = 1;
    } else if (scale.numel() != 1) {
      t.check_shape(e.file, scale_name, scale.shape, {n, 1});
    }
  }
  return requantized_rows(s, scratch, [&](int64_t nn, int64_t kk) {
    return fp8_to_f32(codes[nn * k + kk], DType::F8E4M3) * float_at(scale, (nn / bn) * ceil_div(k, bk) + kk / bk);
  });
}

}  // namespace

std::optional<QuantizedRows> read_quantized_linear(const SafetensorsCheckpoint& ckpt, const QuantizationConfig& q,
                                                   const std::string& module, const WeightShare& s,
                                                   QuantScratch& scratch) {
  // mxfp4 quantizes gpt-oss's experts only (loader/mxfp4_experts.h): its linear modules are float.
  if (!q.enabled() || q.ignores(module) || q.method == "mxfp4") return std::nullopt;
  const ModuleTensors t(ckpt, module);
  const bool head = module == "lm_head" || module == "model.embed_tokens";
  if (s.col_count % kQBlock != 0)
    throw NotSupported(module + ": " + std::to_string(s.col_count) + " input features" +
                       (s.col_count < s.k ? " per tensor-parallel rank" : "") +
                       " are not a multiple of 32, which quantized weights need");
  if (q.online) {  // vLLM's online fp8: per-tensor scale amax / 448 of this share, values rounded to e4m3
    if (head) return std::nullopt;
    const Tensor w = t.floats("weight", {s.n, s.k});
    float amax = 0.0f;
    for (int64_t r = 0; r < s.row_count; ++r)
      for (int64_t c = 0; c < s.col_count; ++c)
        amax = std::max(amax, std::fabs(float_at(w, (s.row_begin + r) * s.k + s.col_begin + c)));
    const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    return requantized_rows(s, scratch, [&](int64_t nn, int64_t kk) {
      return fp8_to_f32(f32_to_fp8(float_at(w, nn * s.k + kk) / scale, DType::F8E4M3), DType::F8E4M3) * scale;
    });
  }
  if (q.fp8) {
    if (head && !(ckpt.raw(module + ".weight"))) return std::nullopt;
    return fp8_rows(t, q, s, scratch);
  }
  const char* marker = q.method == "compressed-tensors" ? "weight_packed" : "qweight";
  if (head && !t.has(marker)) return std::nullopt;
  IntWeight w = q.method == "awq" ? awq_weight(t, q, s.n, s.k)
                : q.method == "gptq" ? gptq_weight(t, q, s.n, s.k)
                                     : compressed_tensors_weight(t, q, s.n, s.k);
  return int_rows(w, s, module, scratch);
}

}  // namespace cserve
