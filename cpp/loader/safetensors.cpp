// safetensors reader: validates each header and exposes tensors as views into the mmap.
#include "loader/safetensors.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>

#include "cserve/error.h"
#include "loader/checked.h"
#include "util/json.h"

namespace cserve {

namespace {

// The reference implementation's limit on the JSON header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> list_safetensors(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw NotFound(dir + ": no such directory");
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (ends_with(name, ".safetensors") && file_exists(dir + "/" + name)) out.push_back(name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// Shard file names named by the index's weight_map, in first-seen order.
std::vector<std::string> shards_from_index(const std::string& index_path) {
  Json index = Json::parse(read_text_file(index_path), index_path);
  const Json* map = index.find("weight_map");
  if (map == nullptr || !map->is_object()) {
    throw InvalidArgument(index_path + ": missing or invalid weight_map");
  }
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& kv : map->as_object()) {
    if (!kv.second.is_string()) {
      throw InvalidArgument(index_path + ": weight_map entry for " + kv.first + " must be a file name");
    }
    const std::string& file = kv.second.as_string();
    if (file.empty() || file.find('/') != std::string::npos || file == "..") {
      throw InvalidArgument(index_path + ": invalid shard file name '" + file + "'");
    }
    if (seen.insert(file).second) shards.push_back(file);
  }
  if (shards.empty()) throw InvalidArgument(index_path + ": weight_map is empty");
  return shards;
}

bool parse_st_dtype(const std::string& name, DType* out) {
  if (name == "F32") *out = DType::F32;
  else if (name == "F16") *out = DType::F16;
  else if (name == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

// Element size of a raw (non-float) dtype; 0 for a dtype cserve does not read at all.
size_t raw_dtype_size(const std::string& name) {
  if (name == "I8" || name == "U8" || name == "F8_E4M3" || name == "BOOL") return 1;  // BOOL: EAGLE-3's t2d
  if (name == "I32") return 4;
  if (name == "I64") return 8;
  return 0;
}

// A JSON number that is a non-negative integer.
bool non_negative_int(const Json& v, int64_t* out) {
  if (!v.is_number()) return false;
  double x = v.as_number();
  if (!(x >= 0 && x < 9.0e18) || x != static_cast<double>(static_cast<int64_t>(x))) return false;
  *out = static_cast<int64_t>(x);
  return true;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& model_dir) : dir_(model_dir) {
  std::string index_path = dir_ + "/model.safetensors.index.json";
  std::vector<std::string> files;
  if (file_exists(index_path)) {
    files = shards_from_index(index_path);
  } else if (file_exists(dir_ + "/model.safetensors")) {
    files = {"model.safetensors"};
  } else {
    files = list_safetensors(dir_);
  }
  if (files.empty()) throw NotFound(dir_ + ": no safetensors weights found");
  for (const std::string& f : files) open_file(dir_ + "/" + f);
}

void SafetensorsCheckpoint::open_file(const std::string& path) {
  auto file = std::make_unique<MmapFile>(path);
  const uint8_t* base = file->data();
  size_t size = file->size();
  if (size < 8) throw InvalidArgument(path + ": truncated safetensors header");
  uint64_t header_len = read_le64(base);
  if (header_len > size - 8)
    throw InvalidArgument(path + ": truncated safetensors header (the header length " + std::to_string(header_len) +
                          " is larger than the file's " + std::to_string(size - 8) + " bytes after it)");
  if (header_len > kMaxHeaderBytes)
    throw InvalidArgument(path + ": safetensors header of " + std::to_string(header_len) + " bytes is larger than " +
                          std::to_string(kMaxHeaderBytes) + " (the format's limit)");
  std::string header_text(reinterpret_cast<const char*>(base + 8), static_cast<size_t>(header_len));
  Json header = Json::parse(header_text, path + " (safetensors header)");
  if (!header.is_object()) throw InvalidArgument(path + ": safetensors header must be a JSON object");

  const uint8_t* data = base + 8 + header_len;
  uint64_t data_size = size - 8 - header_len;
  for (const auto& kv : header.as_object()) {
    const std::string& name = kv.first;
    if (name == "__metadata__") continue;
    const Json& info = kv.second;
    auto bad = [&](const std::string& why) {
      return InvalidArgument(path + ": tensor " + name + ": " + why);
    };
    if (!info.is_object()) throw bad("entry must be an object");
    const Json* dtype = info.find("dtype");
    const Json* shape = info.find("shape");
    const Json* offsets = info.find("data_offsets");
    if (dtype == nullptr || !dtype->is_string()) throw bad("missing or invalid dtype");
    if (shape == nullptr || !shape->is_array()) throw bad("missing or invalid shape");
    if (offsets == nullptr || !offsets->is_array() || offsets->as_array().size() != 2) {
      throw bad("missing or invalid data_offsets");
    }
    Tensor t;
    const size_t raw_size = raw_dtype_size(dtype->as_string());
    if (raw_size == 0 && !parse_st_dtype(dtype->as_string(), &t.dtype)) {
      throw NotSupported(path + ": tensor " + name + " has unsupported dtype " + dtype->as_string() +
                         " (supported: F32, F16, BF16; I8, U8, I32, I64, F8_E4M3, BOOL in quantized checkpoints and EAGLE heads)");
    }
    const size_t elem_bytes = raw_size ? raw_size : dtype_size(t.dtype);
    for (const Json& d : shape->as_array()) {
      int64_t dim = 0;
      if (!non_negative_int(d, &dim)) throw bad("shape must be a list of non-negative integers");
      t.shape.push_back(dim);
    }
    // Checked products: a shape whose byte size overflows must not wrap onto the offsets' size.
    uint64_t numel = 0, expected = 0;
    if (!checked_numel(t.shape, static_cast<uint64_t>(INT64_MAX), &numel) ||
        !checked_mul(numel, elem_bytes, &expected))
      throw bad("shape too large (its size overflows 64 bits)");
    int64_t begin = 0, end = 0;
    for (int i = 0; i < 2; ++i) {
      if (!non_negative_int(offsets->as_array()[i], i == 0 ? &begin : &end)) {
        throw bad("data_offsets must be non-negative integers");
      }
    }
    if (begin > end || static_cast<uint64_t>(end) > data_size) {
      throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                "] outside the data section of " + std::to_string(data_size) + " bytes");
    }
    if (static_cast<uint64_t>(end - begin) != expected) {
      throw bad("data size " + std::to_string(end - begin) + " bytes does not match shape and dtype (" +
                std::to_string(expected) + " bytes)");
    }
    if (entries_.count(name) != 0) {
      throw InvalidArgument(path + ": tensor " + name + " also appears in " + entries_.at(name).file);
    }
    // Kernels read elements with typed loads, so data not aligned to its element size (a header
    // length the writer did not pad) is copied out of the mapping into aligned memory.
    const uint8_t* src = data + begin;
    if (expected != 0 && reinterpret_cast<uintptr_t>(src) % elem_bytes != 0) {
      copies_.emplace_back(static_cast<size_t>(expected));
      std::memcpy(copies_.back().data(), src, static_cast<size_t>(expected));
      src = copies_.back().as<const uint8_t>();
    }
    if (raw_size != 0) {
      if (raw_.count(name) != 0) throw InvalidArgument(path + ": tensor " + name + " also appears in " + raw_.at(name).file);
      raw_.emplace(name, SafetensorsRawEntry{src, dtype->as_string(), raw_size, std::move(t.shape), path});
      continue;
    }
    // Views never write; the const_cast only fits Tensor's pointer type.
    t.data = const_cast<uint8_t*>(src);
    entries_.emplace(name, SafetensorsEntry{std::move(t), path});
  }
  files_.push_back(std::move(file));
}

const SafetensorsEntry& SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (auto raw = raw_.find(name); raw != raw_.end())
    throw NotSupported(raw->second.file + ": tensor " + name + " has dtype " + raw->second.dtype +
                       ", which cserve reads only as part of a quantized weight (quantization_config)");
  if (it == entries_.end()) throw NotFound(dir_ + ": tensor " + name + " not found in checkpoint");
  return it->second;
}

const SafetensorsRawEntry* SafetensorsCheckpoint::raw(const std::string& name) const {
  auto it = raw_.find(name);
  return it == raw_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  for (const auto& kv : raw_) out.push_back(kv.first);
  return out;
}

}  // namespace cserve
