// Leveled logging to stderr: "INFO 11-28 15:56:07 message".
#include "util/logging.h"

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace cserve {

namespace {

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::Debug: return "DEBUG";
    case LogLevel::Info: return "INFO";
    case LogLevel::Warning: return "WARNING";
    case LogLevel::Error: return "ERROR";
  }
  return "INFO";
}

LogLevel level_from_env() {
  const char* env = std::getenv("CSERVE_LOG_LEVEL");
  if (env == nullptr) return LogLevel::Info;
  std::string v(env);
  for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (v == "DEBUG") return LogLevel::Debug;
  if (v == "WARNING" || v == "WARN") return LogLevel::Warning;
  if (v == "ERROR") return LogLevel::Error;
  return LogLevel::Info;
}

// The logger's only state: the threshold and the lock that keeps lines whole.
struct LoggerState {
  std::atomic<int> level{static_cast<int>(level_from_env())};
  std::mutex mutex;
};

LoggerState& logger() {
  static LoggerState state;
  return state;
}

}  // namespace

void set_log_level(LogLevel level) { logger().level.store(static_cast<int>(level)); }

void log(LogLevel level, const std::string& message) {
  LoggerState& state = logger();
  if (static_cast<int>(level) < state.level.load()) return;
  std::time_t now = std::time(nullptr);
  std::tm tm_buf;
  localtime_r(&now, &tm_buf);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%m-%d %H:%M:%S", &tm_buf);
  std::lock_guard<std::mutex> lock(state.mutex);
  std::fprintf(stderr, "%s %s %s\n", level_name(level), stamp, message.c_str());
  std::fflush(stderr);
}

}  // namespace cserve
