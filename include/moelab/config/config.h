// Experiment configuration: TOML with sections [data] [model] [moe] [moe.balance] [train] [debug].
// Every key is declared once in a schema (name, type, default, one-line doc); unknown keys and wrong
// types are errors, and `--set section.key=value` overrides any key. The resolved config is written
// into every run directory, so a run can be re-created from it alone.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace moelab {

using ConfigValue = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<std::string>>;

struct ConfigKey {
  std::string name;  // "section.key"
  ConfigValue default_value;
  std::string doc;
  // False for keys that may change when a run is resumed (threads, logging cadence).
  bool part_of_experiment = true;
};

class Config {
 public:
  static const std::vector<ConfigKey>& schema();
  static Config defaults();
  // Keys absent from the file keep their defaults. Errors name the file and the key.
  static Config from_toml_file(const std::string& path);
  static Config from_toml_string(const std::string& text, const std::string& source_name);

  // --set "section.key=value"; the value is parsed as the key's declared type.
  void apply_override(const std::string& assignment);
  void set(const std::string& key, const ConfigValue& value);  // type-checked

  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<int64_t>& get_int_list(const std::string& key) const;
  const std::vector<std::string>& get_string_list(const std::string& key) const;

  // Checks ranges and combinations (k <= experts, batch > 0, ...); throws Error naming the key.
  void validate() const;

  std::string to_toml() const;
  // Keys whose values differ, only among part_of_experiment keys ("" when none).
  std::string first_experiment_difference(const Config& other) const;

 private:
  const ConfigValue& value(const std::string& key) const;
  std::map<std::string, ConfigValue> values_;
};

// Human-readable name of a value's type, for error messages.
std::string config_type_name(const ConfigValue& value);

}  // namespace moelab
