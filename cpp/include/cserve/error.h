// Errors thrown by the cserve runtime. The Python bindings map each class to a
// Python exception (InvalidArgument -> ValueError, NotFound -> FileNotFoundError,
// NotSupported -> NotImplementedError, OutOfMemory -> MemoryError, EngineDead ->
// cserve._core.EngineDeadError, a RuntimeError).
#pragma once
#include <stdexcept>
#include <string>

namespace cserve {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class InvalidArgument : public Error {
 public:
  using Error::Error;
};
class NotFound : public Error {
 public:
  using Error::Error;
};
class NotSupported : public Error {
 public:
  using Error::Error;
};
class OutOfMemory : public Error {
 public:
  using Error::Error;
};
// The engine stopped after repeated step failures (a sticky device error); it takes no requests.
class EngineDead : public Error {
 public:
  using Error::Error;
};

}  // namespace cserve
