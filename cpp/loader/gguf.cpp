#include "loader/gguf.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "cserve/error.h"

namespace cserve {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little endian
constexpr uint64_t kMaxCount = 1ull << 32;  // guards allocations against corrupt counts

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
  size_t offset(const uint8_t* base) const { return static_cast<size_t>(p_ - base); }
  [[noreturn]] void fail(const std::string& what) const { throw InvalidArgument(path_ + ": " + what); }

 private:
  void need(uint64_t n) const {
    if (n > static_cast<uint64_t>(end_ - p_)) fail("truncated GGUF header");
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& path_;
};

GgufValue read_value(Reader& r, GgufValue::Type type, int depth) {
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
      if (depth > 4) r.fail("GGUF arrays nested too deeply");
      v.elem_type = static_cast<T>(r.read<uint32_t>());
      const uint64_t n = r.read<uint64_t>();
      if (n > kMaxCount) r.fail("GGUF array too long");
      v.array.reserve(static_cast<size_t>(n));
      for (uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(r, v.elem_type, depth + 1));
      break;
    }
    default:
      r.fail("unknown GGUF value type " + std::to_string(static_cast<uint32_t>(type)));
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
  Reader r(base, file_->size(), path_);
  if (r.read<uint32_t>() != kMagic) r.fail("not a GGUF file (bad magic)");
  version_ = r.read<uint32_t>();
  if (version_ != 2 && version_ != 3)
    r.fail("GGUF version " + std::to_string(version_) + " is not supported (only 2 and 3)");
  const uint64_t n_tensors = r.read<uint64_t>();
  const uint64_t n_kv = r.read<uint64_t>();
  if (n_tensors > kMaxCount || n_kv > kMaxCount) r.fail("corrupt GGUF header (counts)");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.string();
    const auto type = static_cast<GgufValue::Type>(r.read<uint32_t>());
    metadata_[key] = read_value(r, type, 0);
  }
  struct Info {
    GgufTensor t;
    uint64_t offset;
    int64_t numel;
  };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info info;
    info.t.name = r.string();
    const uint32_t n_dims = r.read<uint32_t>();
    if (n_dims == 0 || n_dims > 4) r.fail("tensor " + info.t.name + ": " + std::to_string(n_dims) + " dimensions");
    std::vector<int64_t> ne(n_dims);
    info.numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = r.read<uint64_t>();
      if (v == 0 || v > (1ull << 40)) r.fail("tensor " + info.t.name + ": bad dimension");
      ne[d] = static_cast<int64_t>(v);
      info.numel *= ne[d];
    }
    info.t.shape.assign(ne.rbegin(), ne.rend());
    info.t.type = static_cast<GgmlType>(r.read<uint32_t>());
    info.offset = r.read<uint64_t>();
    if (!ggml_type_supported(info.t.type))
      throw NotSupported(path_ + ": tensor " + info.t.name + " has ggml type " + ggml_type_name(info.t.type) +
                         " (" + std::to_string(static_cast<uint32_t>(info.t.type)) +
                         "), which cserve does not read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, "
                         "Q8_0, Q4_K, Q5_K, Q6_K)");
    if (ne[0] % ggml_block_elems(info.t.type) != 0)
      r.fail("tensor " + info.t.name + ": row length not a multiple of its block size");
    infos.push_back(std::move(info));
  }
  int64_t alignment = get_int("general.alignment", 32);
  if (alignment <= 0 || (alignment & (alignment - 1))) r.fail("general.alignment must be a power of two");
  const size_t header_end = r.offset(base);
  const size_t data_start = (header_end + alignment - 1) / alignment * alignment;
  for (Info& info : infos) {
    GgufTensor& t = info.t;
    t.nbytes = static_cast<size_t>(info.numel / ggml_block_elems(t.type) * ggml_block_bytes(t.type));
    if (info.offset % static_cast<uint64_t>(alignment) != 0) r.fail("tensor " + t.name + ": misaligned data");
    if (data_start + info.offset > file_->size() || t.nbytes > file_->size() - data_start - info.offset)
      r.fail("tensor " + t.name + ": data lies outside the file");
    t.data = base + data_start + info.offset;
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
