// Weight packing for the GEMM kernels, and row lookups (embeddings).
#include <cstring>
#include <string>

#include "backend/cpu/gemm_internal.h"
#include "backend/cpu/kernels.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace {

using detail::kPanel;

float load_as_f32(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F8E4M3:
    case DType::F8E5M2: return fp8_to_f32(static_cast<const uint8_t*>(base)[i], t);
  }
  return 0.0f;
}

// Index (in elements) of W[row][col] inside the packed buffer.
int64_t packed_index(const PackedMatrix& w, int64_t row, int64_t col) {
  const int64_t p = row / kPanel, lane = row % kPanel;
  if (w.dtype == DType::BF16) {
    return ((p * (w.k_padded / 2) + col / 2) * kPanel + lane) * 2 + (col & 1);
  }
  return (p * w.k_padded + col) * kPanel + lane;
}

void check_row_ids(const int32_t* ids, int64_t num_ids, int64_t rows, const char* what) {
  for (int64_t i = 0; i < num_ids; ++i) {
    if (ids[i] < 0 || ids[i] >= rows) {
      throw InvalidArgument(std::string(what) + ": id " + std::to_string(ids[i]) +
                            " out of range [0, " + std::to_string(rows) + ")");
    }
  }
}

}  // namespace

PackedMatrix pack_matrix(const std::vector<Tensor>& parts, const std::vector<Tensor>& biases,
                         DType dtype) {
  if (parts.empty()) throw InvalidArgument("pack_matrix: no parts");
  if (!biases.empty() && biases.size() != parts.size()) {
    throw InvalidArgument("pack_matrix: biases must be empty or one per part");
  }
  const int64_t k = parts[0].shape.size() == 2 ? parts[0].shape[1] : -1;
  int64_t n = 0;
  bool any_bias = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Tensor& t = parts[i];
    if (t.shape.size() != 2 || t.data == nullptr) {
      throw InvalidArgument("pack_matrix: each part must be a 2-D tensor with data");
    }
    if (t.shape[1] != k) {
      throw InvalidArgument("pack_matrix: parts have different k (" + std::to_string(k) + " vs " +
                            std::to_string(t.shape[1]) + ")");
    }
    if (!biases.empty() && biases[i].data != nullptr) {
      if (biases[i].numel() != t.shape[0]) {
        throw InvalidArgument("pack_matrix: bias of part " + std::to_string(i) + " has " +
                              std::to_string(biases[i].numel()) + " values, expected " +
                              std::to_string(t.shape[0]));
      }
      any_bias = true;
    }
    n += t.shape[0];
  }
  if (k <= 0 || n <= 0) throw InvalidArgument("pack_matrix: empty matrix");

  PackedMatrix w;
  w.dtype = dtype;
  w.n = n;
  w.k = k;
  w.n_padded = (n + kPanel - 1) / kPanel * kPanel;
  w.k_padded = dtype == DType::BF16 ? (k + 1) / 2 * 2 : k;
  w.data = Buffer(static_cast<size_t>(w.n_padded * w.k_padded) * dtype_size(dtype));

  int64_t row0 = 0;
  for (const Tensor& t : parts) {
    const int64_t rows = t.shape[0];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        const float v = load_as_f32(t.data, t.dtype, r * k + c);
        const int64_t idx = packed_index(w, row0 + r, c);
        switch (dtype) {
          case DType::F32: w.data.as<float>()[idx] = v; break;
          case DType::F16: w.data.as<uint16_t>()[idx] = f32_to_f16(v); break;
          case DType::BF16: w.data.as<uint16_t>()[idx] = f32_to_bf16(v); break;
          case DType::F8E4M3:
          case DType::F8E5M2: throw NotSupported("fp8 weights are not supported");
        }
      }
    }
    row0 += rows;
  }

  if (any_bias) {
    w.bias.assign(static_cast<size_t>(n), 0.0f);
    row0 = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const Tensor& b = biases[i];
      if (b.data != nullptr) {
        for (int64_t r = 0; r < parts[i].shape[0]; ++r) w.bias[row0 + r] = load_as_f32(b.data, b.dtype, r);
      }
      row0 += parts[i].shape[0];
    }
  }
  return w;
}

void gather_rows(const PackedMatrix& w, const int32_t* ids, int64_t num_ids, float* out) {
  check_row_ids(ids, num_ids, w.n, "gather_rows");
  for (int64_t i = 0; i < num_ids; ++i) {
    float* dst = out + i * w.k;
    for (int64_t c = 0; c < w.k; ++c) dst[c] = load_as_f32(w.data.data(), w.dtype, packed_index(w, ids[i], c));
  }
}

void embedding(const Tensor& table, const int32_t* ids, int64_t num_ids, float* out) {
  if (table.shape.size() != 2) throw InvalidArgument("embedding: table must be 2-D");
  const int64_t rows = table.shape[0], dim = table.shape[1];
  check_row_ids(ids, num_ids, rows, "embedding");
  const size_t row_bytes = static_cast<size_t>(dim) * dtype_size(table.dtype);
  for (int64_t i = 0; i < num_ids; ++i) {
    const char* src = static_cast<const char*>(table.data) + row_bytes * ids[i];
    convert_to_f32(src, table.dtype, out + i * dim, static_cast<size_t>(dim));
  }
}

}  // namespace cserve::cpu
