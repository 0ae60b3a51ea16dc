// A tiny command-line parser shared by fisherctl and fisherd-demo.
//
// Accepts `--name=value` and bare `--name` (a boolean true), anywhere on the line;
// everything else is a positional argument; `--` ends the flags. Names are
// hyphenated (`--timeout-seconds`). Each getter marks its flag as known, so after all
// lookups CheckNoUnknownFlags() reports typos instead of silently ignoring them.
#ifndef FISHERD_CLIENT_CLI_FLAGS_H_
#define FISHERD_CLIENT_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fisherd::client {

class CliFlags {
 public:
  // INVALID_ARGUMENT for a malformed flag (`--`, `--=x`) or one given twice.
  static absl::StatusOr<CliFlags> Parse(int argc, char** argv);

  const std::vector<std::string>& positional() const { return positional_; }

  bool Has(absl::string_view name) const;
  std::string GetString(absl::string_view name, absl::string_view fallback);
  // INVALID_ARGUMENT naming the flag when the value does not parse.
  absl::StatusOr<double> GetDouble(absl::string_view name, double fallback);
  absl::StatusOr<int64_t> GetInt(absl::string_view name, int64_t fallback);
  // Bare `--name`, `--name=true|1|yes`, `--name=false|0|no`.
  absl::StatusOr<bool> GetBool(absl::string_view name, bool fallback);

  // INVALID_ARGUMENT listing the flags that no getter asked for.
  absl::Status CheckNoUnknownFlags() const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string, std::less<>> values_;
  std::set<std::string, std::less<>> known_;
};

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_CLI_FLAGS_H_
