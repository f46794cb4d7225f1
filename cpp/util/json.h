// A small JSON reader (config.json, safetensors headers, index files).
// Parse errors throw InvalidArgument with the byte offset and `source` in the message.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cserve {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text, const std::string& source = "<json>");

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }

  // Typed accessors throw InvalidArgument on the wrong kind.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // number that must be integral
  const std::string& as_string() const;
  const std::vector<Json>& as_array() const;
  const std::map<std::string, Json>& as_object() const;

  // `base` with each key of the object `overrides` set to its value (vLLM's --hf-overrides): a
  // sub-config (a key ending in _config, e.g. text_config) whose values are both objects is
  // merged key by key the same way; any other value (rope_scaling too) replaces the old one.
  static Json merge(const Json& base, const Json& overrides);

  // Object lookup: nullptr when absent or when this is not an object.
  const Json* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  friend class JsonParser;
};

std::string read_text_file(const std::string& path);  // throws NotFound

}  // namespace cserve
