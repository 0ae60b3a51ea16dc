#include "client/cli_flags.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fisherd::client {

absl::StatusOr<CliFlags> CliFlags::Parse(int argc, char** argv) {
  CliFlags flags;
  bool flags_ended = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (flags_ended || !absl::StartsWith(arg, "--")) {
      flags.positional_.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    arg.remove_prefix(2);
    const size_t eq = arg.find('=');
    std::string name(arg.substr(0, eq));
    std::string value = eq == absl::string_view::npos ? "true" : std::string(arg.substr(eq + 1));
    if (name.empty()) return absl::InvalidArgumentError(absl::StrCat("malformed flag ", argv[i]));
    if (!flags.values_.emplace(name, value).second) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
  }
  return flags;
}

bool CliFlags::Has(absl::string_view name) const { return values_.find(name) != values_.end(); }

std::string CliFlags::GetString(absl::string_view name, absl::string_view fallback) {
  known_.emplace(name);
  auto it = values_.find(name);
  return it == values_.end() ? std::string(fallback) : it->second;
}

absl::StatusOr<double> CliFlags::GetDouble(absl::string_view name, double fallback) {
  known_.emplace(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value;
  if (!absl::SimpleAtod(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", it->second, " is not a number"));
  }
  return value;
}

absl::StatusOr<int64_t> CliFlags::GetInt(absl::string_view name, int64_t fallback) {
  known_.emplace(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", it->second, " is not an integer"));
  }
  return value;
}

absl::StatusOr<bool> CliFlags::GetBool(absl::string_view name, bool fallback) {
  known_.emplace(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  bool value;
  if (!absl::SimpleAtob(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", it->second, " is not true or false"));
  }
  return value;
}

absl::Status CliFlags::CheckNoUnknownFlags() const {
  std::vector<std::string> unknown;
  for (const auto& [name, value] : values_) {
    if (known_.find(name) == known_.end()) unknown.push_back(absl::StrCat("--", name));
  }
  if (unknown.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("unknown flag(s): ", absl::StrJoin(unknown, " ")));
}

}  // namespace fisherd::client
