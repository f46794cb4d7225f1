// GGUF files (v2, v3) read in place: the header, the metadata key/values, and the
// tensor directory; tensor data stays in the memory-mapped file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/quant.h"
#include "util/mmap_file.h"

namespace cserve {

struct GgufValue {
  enum class Type : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
    U64 = 10, I64 = 11, F64 = 12,
  };
  Type type = Type::U8;
  int64_t i = 0;          // every integer type and bool
  uint64_t u = 0;         // U64 values above INT64_MAX
  double f = 0;           // F32, F64
  std::string s;          // STRING
  Type elem_type = Type::U8;
  std::vector<GgufValue> array;

  bool is_integer() const { return type != Type::F32 && type != Type::F64 && type != Type::STRING && type != Type::ARRAY; }
  bool is_float() const { return type == Type::F32 || type == Type::F64; }
  double as_double() const { return is_float() ? f : static_cast<double>(i); }
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> shape;  // row-major, as in PyTorch: ggml's ne reversed
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

class GgufFile {
 public:
  // Throws NotFound, InvalidArgument (bad magic, unsupported version, truncated or
  // inconsistent header, data outside the file; naming the file and the tensor) and
  // NotSupported (a tensor type cserve cannot read, naming it).
  explicit GgufFile(const std::string& path);

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;
  // Typed getters; throw InvalidArgument naming the key when the type is wrong.
  std::string get_string(const std::string& key, const std::string& fallback = "") const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;

  bool has_tensor(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws NotFound naming the tensor and the file.
  const GgufTensor& tensor(const std::string& name) const;
  const std::map<std::string, GgufTensor>& tensors() const { return tensors_; }

 private:
  std::string path_;
  std::unique_ptr<MmapFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::map<std::string, GgufTensor> tensors_;
};

// True for a path ending in .gguf (any case).
bool is_gguf_path(const std::string& path);

}  // namespace cserve
