#include "loader/gguf.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "cserve/error.h"
#include "loader/checked.h"

namespace cserve {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little endian
// Metadata values (array elements included) a header may hold: real files have a few
// million at most (the tokenizer's vocabulary and merges); each costs ~100 bytes here.
constexpr uint64_t kMaxValues = 1ull << 24;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxDim = 1ull << 40;

// Bounds-checked reads from the mapped header.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& path) : p_(data), end_(data + size), path_(path) {}

  template <class T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  std::string string() {
    const uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(p_), static_cast<size_t>(n));
    p_ += n;
    return s;
  }
  uint64_t remaining() const { return static_cast<uint64_t>(end_ - p_); }
  size_t offset(const uint8_t* base) const { return static_cast<size_t>(p_ - base); }
  // Counts metadata values against kMaxValues.
  void count_values(uint64_t n) {
    num_values_ += n;
    if (num_values_ > kMaxValues)
      fail("corrupt GGUF header: more than " + std::to_string(kMaxValues) + " metadata values");
  }
  [[noreturn]] void fail(const std::string& what) const { throw InvalidArgument(path_ + ": " + what); }

 private:
  void need(uint64_t n) const {
    if (n > remaining()) fail("truncated GGUF header");
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& path_;
  uint64_t num_values_ = 0;
};

// The fewest bytes a value of `type` takes in the file; 0 for an unknown type.
uint64_t min_value_bytes(GgufValue::Type type) {
  using T = GgufValue::Type;
  switch (type) {
    case T::U8: case T::I8: case T::BOOL: return 1;
    case T::U16: case T::I16: return 2;
    case T::U32: case T::I32: case T::F32: return 4;
    case T::U64: case T::I64: case T::F64: case T::STRING: return 8;  // a string's length
    case T::ARRAY: return 12;                                          // element type and count
  }
  return 0;
}

GgufValue read_value(Reader& r, GgufValue::Type type, int depth, const std::string& key) {
  using T = GgufValue::Type;
  GgufValue v;
  v.type = type;
  switch (type) {
    case T::U8: v.i = r.read<uint8_t>(); break;
    case T::I8: v.i = r.read<int8_t>(); break;
    case T::U16: v.i = r.read<uint16_t>(); break;
    case T::I16: v.i = r.read<int16_t>(); break;
    case T::U32: v.i = r.read<uint32_t>(); break;
    case T::I32: v.i = r.read<int32_t>(); break;
    case T::BOOL: v.i = r.read<uint8_t>() != 0; break;
    case T::U64: v.u = r.read<uint64_t>(); v.i = static_cast<int64_t>(v.u); break;
    case T::I64: v.i = r.read<int64_t>(); break;
    case T::F32: v.f = r.read<float>(); break;
    case T::F64: v.f = r.read<double>(); break;
    case T::STRING: v.s = r.string(); break;
    case T::ARRAY: {
      if (depth > 4) r.fail("metadata " + key + ": GGUF arrays nested too deeply");
      v.elem_type = static_cast<T>(r.read<uint32_t>());
      const uint64_t elem_bytes = min_value_bytes(v.elem_type);
      if (elem_bytes == 0)
        r.fail("metadata " + key + ": unknown GGUF array element type " +
               std::to_string(static_cast<uint32_t>(v.elem_type)));
      const uint64_t n = r.read<uint64_t>();
      // Bounded by the bytes left, so a corrupt count cannot reserve more than the file holds.
      if (n > r.remaining() / elem_bytes)
        r.fail("metadata " + key + ": array of " + std::to_string(n) + " elements is longer than the file");
      r.count_values(n);
      v.array.reserve(static_cast<size_t>(n));
      for (uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(r, v.elem_type, depth + 1, key));
      break;
    }
    default:
      r.fail("metadata " + key + ": unknown GGUF value type " + std::to_string(static_cast<uint32_t>(type)));
  }
  return v;
}

}  // namespace

bool is_gguf_path(const std::string& path) {
  if (path.size() < 5) return false;
  std::string ext = path.substr(path.size() - 5);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".gguf";
}

GgufFile::GgufFile(const std::string& path) : path_(path), file_(std::make_unique<MmapFile>(path)) {
  const uint8_t* base = file_->data();
  const uint64_t file_size = file_->size();
  Reader r(base, file_->size(), path_);
  if (r.read<uint32_t>() != kMagic) r.fail("not a GGUF file (bad magic)");
  version_ = r.read<uint32_t>();
  if (version_ != 2 && version_ != 3)
    r.fail("GGUF version " + std::to_string(version_) + " is not supported (only 2 and 3)");
  const uint64_t n_tensors = r.read<uint64_t>();
  const uint64_t n_kv = r.read<uint64_t>();
  // Each key/value takes at least 13 bytes (key length, type, one byte of value), each
  // tensor info at least 32 (name length, n_dims, one dimension, type, offset).
  if (n_kv > r.remaining() / 13 || n_tensors > r.remaining() / 32)
    r.fail("truncated or corrupt GGUF header: " + std::to_string(n_tensors) + " tensors and " + std::to_string(n_kv) +
           " metadata keys do not fit in the file");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.string();
    const auto type = static_cast<GgufValue::Type>(r.read<uint32_t>());
    r.count_values(1);
    GgufValue value = read_value(r, type, 0, key);
    if (!metadata_.emplace(key, std::move(value)).second) r.fail("metadata " + key + " appears twice");
  }
  struct Info {
    GgufTensor t;
    uint64_t offset;
    uint64_t numel;
  };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info info;
    info.t.name = r.string();
    auto bad = [&](const std::string& why) { r.fail("tensor " + info.t.name + ": " + why); };
    const uint32_t n_dims = r.read<uint32_t>();
    if (n_dims == 0 || n_dims > kMaxDims)
      bad(std::to_string(n_dims) + " dimensions (1 to " + std::to_string(kMaxDims) + " allowed)");
    std::vector<int64_t> ne(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = r.read<uint64_t>();
      if (v == 0 || v > kMaxDim) bad("bad dimension " + std::to_string(v));
      ne[d] = static_cast<int64_t>(v);
    }
    if (!checked_numel(ne, static_cast<uint64_t>(INT64_MAX), &info.numel)) bad("shape too large");
    info.t.shape.assign(ne.rbegin(), ne.rend());
    info.t.type = static_cast<GgmlType>(r.read<uint32_t>());
    info.offset = r.read<uint64_t>();
    if (!ggml_type_supported(info.t.type))
      throw NotSupported(path_ + ": tensor " + info.t.name + " has ggml type " + ggml_type_name(info.t.type) +
                         " (" + std::to_string(static_cast<uint32_t>(info.t.type)) +
                         "), which cserve does not read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, "
                         "Q8_0, Q4_K, Q5_K, Q6_K, MXFP4)");
    if (ne[0] % ggml_block_elems(info.t.type) != 0)
      bad("row length " + std::to_string(ne[0]) + " not a multiple of its block size " +
          std::to_string(ggml_block_elems(info.t.type)));
    uint64_t nbytes = 0;
    if (!checked_mul(info.numel / static_cast<uint64_t>(ggml_block_elems(info.t.type)),
                     static_cast<uint64_t>(ggml_block_bytes(info.t.type)), &nbytes) ||
        nbytes > file_size)
      bad("data of " + std::to_string(info.numel) + " elements lies outside the file (" + std::to_string(file_size) +
          " bytes)");
    info.t.nbytes = static_cast<size_t>(nbytes);
    infos.push_back(std::move(info));
  }
  const int64_t alignment = get_int("general.alignment", 32);
  if (alignment <= 0 || alignment > (1 << 30) || (alignment & (alignment - 1)))
    r.fail("general.alignment must be a power of two up to 2^30, got " + std::to_string(alignment));
  const uint64_t align = static_cast<uint64_t>(alignment);
  const uint64_t header_end = r.offset(base);
  const uint64_t data_start = (header_end + align - 1) / align * align;  // header_end <= file size: no overflow
  for (Info& info : infos) {
    GgufTensor& t = info.t;
    if (info.offset % align != 0) r.fail("tensor " + t.name + ": misaligned data offset " + std::to_string(info.offset));
    uint64_t begin = 0;
    if (!checked_add(data_start, info.offset, &begin) || !range_inside(begin, t.nbytes, file_size))
      r.fail("tensor " + t.name + ": data of " + std::to_string(t.nbytes) + " bytes at offset " +
             std::to_string(info.offset) + " lies outside the file (" + std::to_string(file_size) +
             " bytes, the data section starting at byte " + std::to_string(data_start) + ")");
    t.data = base + begin;
    if (!tensors_.emplace(t.name, t).second) r.fail("tensor " + t.name + " appears twice");
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufValue::Type::STRING) throw InvalidArgument(path_ + ": metadata " + key + " is not a string");
  return v->s;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (!v->is_integer()) throw InvalidArgument(path_ + ": metadata " + key + " is not an integer");
  return v->i;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (!v->is_float() && !v->is_integer()) throw InvalidArgument(path_ + ": metadata " + key + " is not a number");
  return v->as_double();
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw NotFound(path_ + ": no tensor " + name);
  return it->second;
}

}  // namespace cserve
