// A read-only memory-mapped file. Throws NotFound / InvalidArgument naming the path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cserve {

// Tells the kernel the pages inside [p, p + n) of a read-only file mapping are not
// needed now: they stop counting as resident and are read again if touched.
void drop_file_pages(const void* p, size_t n);

class MmapFile {
 public:
  explicit MmapFile(const std::string& path);
  ~MmapFile();
  MmapFile(const MmapFile&) = delete;
  MmapFile& operator=(const MmapFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cserve
