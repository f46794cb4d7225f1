// Leveled logging to stderr in vLLM's style: "INFO 11-28 15:56:07 [file] message".
#pragma once
#include <string>

namespace cserve {

enum class LogLevel { Debug = 0, Info = 1, Warning = 2, Error = 3 };

void set_log_level(LogLevel level);
void log(LogLevel level, const std::string& message);
inline void log_info(const std::string& m) { log(LogLevel::Info, m); }
inline void log_warning(const std::string& m) { log(LogLevel::Warning, m); }

}  // namespace cserve
