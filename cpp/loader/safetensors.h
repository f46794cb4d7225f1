// safetensors checkpoints read in place: one file or shards listed in
// model.safetensors.index.json, memory-mapped, not copied (but for tensors whose data is not
// aligned to their element size, which are copied into aligned memory the checkpoint owns).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/tensor.h"
#include "util/mmap_file.h"

namespace cserve {

struct SafetensorsEntry {
  Tensor view;        // points into the mapped file (or an aligned copy); dtype F32, F16 or BF16
  std::string file;   // the file it lives in (for error messages)
};

// A tensor of a type that holds no weights of its own (I8, U8, I32, I64, F8_E4M3, BOOL): the packed
// codes, zero points, indices and fp8 values of quantized checkpoints, read in place by the
// quantized-checkpoint loader, and EAGLE-3's draft-to-target id table (d2t).
struct SafetensorsRawEntry {
  const uint8_t* data = nullptr;
  std::string dtype;  // the file's name for it: "I32", "F8_E4M3", ...
  size_t elem_bytes = 0;
  std::vector<int64_t> shape;
  std::string file;
};

class SafetensorsCheckpoint {
 public:
  // Opens <dir>/model.safetensors, or the shards of <dir>/model.safetensors.index.json,
  // or every *.safetensors in dir. Throws NotFound / InvalidArgument naming the file
  // (and the tensor) for missing files, truncated or corrupt headers, unsupported
  // dtypes or data offsets outside the file.
  explicit SafetensorsCheckpoint(const std::string& model_dir);

  bool has(const std::string& name) const { return entries_.count(name) != 0 || raw_.count(name) != 0; }
  // Throws NotFound naming the tensor and the checkpoint directory, NotSupported for a raw one.
  const SafetensorsEntry& get(const std::string& name) const;
  // A raw tensor (see SafetensorsRawEntry); null when there is no such tensor or it is a float one.
  const SafetensorsRawEntry* raw(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }

 private:
  void open_file(const std::string& path);
  std::string dir_;
  std::vector<std::unique_ptr<MmapFile>> files_;
  std::vector<Buffer> copies_;  // misaligned tensors, copied
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, SafetensorsRawEntry> raw_;
};

}  // namespace cserve
