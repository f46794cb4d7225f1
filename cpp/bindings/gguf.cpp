// gguf_metadata(path): a GGUF file's metadata as a dict, read by the C++ reader (the
// Python side builds the tokenizer and chat template from it).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "loader/gguf.h"

namespace nb = nanobind;

namespace {

nb::object to_python(const cserve::GgufValue& v) {
  using T = cserve::GgufValue::Type;
  switch (v.type) {
    case T::BOOL: return nb::bool_(v.i != 0);
    case T::F32: case T::F64: return nb::float_(v.f);
    case T::STRING: return nb::str(v.s.data(), v.s.size());
    case T::U64: return nb::int_(v.u);
    case T::ARRAY: {
      nb::list out;
      for (const auto& e : v.array) out.append(to_python(e));
      return out;
    }
    default: return nb::int_(v.i);
  }
}

}  // namespace

void bind_gguf(nb::module_& m) {
  m.def(
      "gguf_metadata",
      [](const std::string& path) {
        cserve::GgufFile file(path);
        nb::dict out;
        for (const auto& [key, value] : file.metadata()) out[nb::str(key.data(), key.size())] = to_python(value);
        return out;
      },
      nb::arg("path"), "The metadata key/values of a GGUF file (arrays as lists).");
}
