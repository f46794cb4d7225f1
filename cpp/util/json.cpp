// A strict recursive-descent JSON reader (RFC 8259) and typed accessors.
#include "util/json.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <sys/stat.h>

#include "cserve/error.h"

namespace cserve {

namespace {

constexpr int kMaxDepth = 512;

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::Null: return "null";
    case Json::Kind::Bool: return "bool";
    case Json::Kind::Number: return "number";
    case Json::Kind::String: return "string";
    case Json::Kind::Array: return "array";
    case Json::Kind::Object: return "object";
  }
  return "unknown";
}

[[noreturn]] void wrong_kind(const char* expected, Json::Kind got) {
  throw InvalidArgument(std::string("JSON: expected ") + expected + ", got " + kind_name(got));
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

}  // namespace

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& reason) const {
    throw InvalidArgument(source_ + ": invalid JSON at byte " + std::to_string(pos_) + ": " + reason);
  }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void skip_ws() {
    while (!at_end()) {
      char c = s_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  void expect_literal(const char* lit) {
    size_t n = std::strlen(lit);
    if (s_.compare(pos_, n, lit) != 0) fail(std::string("expected '") + lit + "'");
    pos_ += n;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    if (at_end()) fail("unexpected end of input");
    Json v;
    char c = peek();
    switch (c) {
      case '{': parse_object(v, depth); break;
      case '[': parse_array(v, depth); break;
      case '"':
        v.kind_ = Json::Kind::String;
        v.string_ = parse_string();
        break;
      case 't':
        expect_literal("true");
        v.kind_ = Json::Kind::Bool;
        v.bool_ = true;
        break;
      case 'f':
        expect_literal("false");
        v.kind_ = Json::Kind::Bool;
        break;
      case 'n':
        expect_literal("null");
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          v.kind_ = Json::Kind::Number;
          v.number_ = parse_number();
        } else {
          fail(std::string("unexpected character '") + c + "'");
        }
    }
    return v;
  }

  void parse_object(Json& v, int depth) {
    v.kind_ = Json::Kind::Object;
    ++pos_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return;
    }
    while (true) {
      skip_ws();
      if (peek() != '"') fail("expected string key");
      std::string key = parse_string();
      skip_ws();
      if (peek() != ':') fail("expected ':'");
      ++pos_;
      skip_ws();
      v.object_[key] = parse_value(depth + 1);  // a repeated key keeps the last value
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return;
      }
      fail(at_end() ? "unexpected end of input in object" : "expected ',' or '}'");
    }
  }

  void parse_array(Json& v, int depth) {
    v.kind_ = Json::Kind::Array;
    ++pos_;  // '['
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return;
    }
    while (true) {
      skip_ws();
      v.array_.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return;
      }
      fail(at_end() ? "unexpected end of input in array" : "expected ',' or ']'");
    }
  }

  uint32_t parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    uint32_t cp = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_ + i];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= c - '0';
      else if (c >= 'a' && c <= 'f') cp |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') cp |= c - 'A' + 10;
      else fail("invalid \\u escape");
    }
    pos_ += 4;
    return cp;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("control character in string");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (at_end()) fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (s_.compare(pos_, 2, "\\u") != 0) fail("unpaired high surrogate");
            pos_ += 2;
            uint32_t lo = parse_hex4();
            if (lo < 0xdc00 || lo > 0xdfff) fail("invalid low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            fail("unpaired low surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail(std::string("invalid escape '\\") + e + "'");
      }
    }
  }

  double parse_number() {
    size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      fail("invalid number");
    }
    if (peek() == '.') {
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected digit after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected digit in exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    std::string token = s_.substr(start, pos_ - start);
    // strtod honours the C locale; cserve never changes LC_NUMERIC.
    double value = std::strtod(token.c_str(), nullptr);
    if (std::isinf(value)) {
      pos_ = start;
      fail("number out of range");
    }
    return value;
  }

  const std::string& s_;
  const std::string& source_;
  size_t pos_ = 0;
};

Json Json::parse(const std::string& text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

bool Json::as_bool() const {
  if (kind_ != Kind::Bool) wrong_kind("bool", kind_);
  return bool_;
}

double Json::as_number() const {
  if (kind_ != Kind::Number) wrong_kind("number", kind_);
  return number_;
}

int64_t Json::as_int() const {
  if (kind_ != Kind::Number) wrong_kind("integer", kind_);
  if (!std::isfinite(number_) || std::floor(number_) != number_ || number_ < -9.2233720368547758e18 ||
      number_ >= 9.2233720368547758e18) {
    throw InvalidArgument("JSON: expected integer, got non-integral number");
  }
  return static_cast<int64_t>(number_);
}

const std::string& Json::as_string() const {
  if (kind_ != Kind::String) wrong_kind("string", kind_);
  return string_;
}

const std::vector<Json>& Json::as_array() const {
  if (kind_ != Kind::Array) wrong_kind("array", kind_);
  return array_;
}

const std::map<std::string, Json>& Json::as_object() const {
  if (kind_ != Kind::Object) wrong_kind("object", kind_);
  return object_;
}

Json Json::merge(const Json& base, const Json& overrides) {
  Json out = base;
  for (const auto& [key, value] : overrides.as_object()) {
    auto it = out.object_.find(key);
    const bool sub_config = key.size() > 7 && key.compare(key.size() - 7, 7, "_config") == 0;
    if (sub_config && it != out.object_.end() && it->second.is_object() && value.is_object())
      it->second = merge(it->second, value);
    else
      out.object_[key] = value;
  }
  return out;
}

const Json* Json::find(const std::string& key) const {
  if (kind_ != Kind::Object) return nullptr;
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}

std::string read_text_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw NotFound(path + ": no such file");
    throw InvalidArgument(path + ": cannot read: " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) throw InvalidArgument(path + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(path + ": no such file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InvalidArgument(path + ": read error");
  return ss.str();
}

}  // namespace cserve
