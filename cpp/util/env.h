// Boolean switches read from the environment.
#pragma once
#include <cstdlib>
#include <string>

namespace cserve {

// Whether environment variable `name` is set to something other than "" or "0".
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

}  // namespace cserve
