// A tiny command-line parser shared by fisherctl and fisherd-demo.
//
// Accepts `--name=value` and bare `--name` (a boolean true), anywhere on the line;
// everything else is a positional argument; `--` ends the flags. Names are
// hyphenated (`--timeout-seconds`). Each getter marks its flag as known, so after all
// lookups CheckNoUnknownFlags() reports typos instead of silently ignoring them.
// A flag may be given more than once only when Parse was told it repeats
// (fisherctl's --block); GetAll reads every value.
//
// Also the command-line form of a layered session's blocks (ParseBlockSpec).
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
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

class CliFlags {
 public:
  // INVALID_ARGUMENT for a malformed flag (`--`, `--=x`) or one given twice that is
  // not in `repeatable`.
  static absl::StatusOr<CliFlags> Parse(int argc, char** argv,
                                        const std::set<std::string>& repeatable = {});

  const std::vector<std::string>& positional() const { return positional_; }

  bool Has(absl::string_view name) const;
  std::string GetString(absl::string_view name, absl::string_view fallback);
  // INVALID_ARGUMENT naming the flag when the value does not parse.
  absl::StatusOr<double> GetDouble(absl::string_view name, double fallback);
  absl::StatusOr<int64_t> GetInt(absl::string_view name, int64_t fallback);
  // Bare `--name`, `--name=true|1|yes`, `--name=false|0|no`.
  absl::StatusOr<bool> GetBool(absl::string_view name, bool fallback);
  // Every value of the flag, in command-line order (empty when not given). The single
  // getters above read the last one.
  std::vector<std::string> GetAll(absl::string_view name);

  // INVALID_ARGUMENT listing the flags that no getter asked for.
  absl::Status CheckNoUnknownFlags() const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string, std::less<>> values_;  // the last value of each
  std::map<std::string, std::vector<std::string>, std::less<>> all_values_;
  std::set<std::string, std::less<>> known_;
};

// One block of a layered session from its command-line spec NAME:KIND:SHAPE, KIND
// case-insensitive (the inverse of FormatBlockSpec in client/describe.h):
//   NAME:dense:DIM            a dense DIM x DIM block
//   NAME:diagonal:DIM         its diagonal only
//   NAME:low_rank:DIM/ROWS    the latest ROWS score rows (max_rows); also low-rank
//   NAME:kronecker:INxOUT     K-FAC factors of a layer with IN inputs and OUT outputs
//                             (a convolution: IN = in_channels*kh*kw, OUT = out_channels)
//   NAME:kronecker:INxOUT+bias   the same with OUT biases after the weights
// Sizes are checked for form only (positive integers); the server judges the rest
// (names, limits). INVALID_ARGUMENT quoting the spec otherwise.
absl::StatusOr<fisherd::v1::BlockConfig> ParseBlockSpec(absl::string_view spec);

// A layout file: one block spec a line, in parameter order; blank lines and text after
// '#' are ignored. INVALID_ARGUMENT naming the line of a bad spec, or for no blocks.
absl::StatusOr<std::vector<fisherd::v1::BlockConfig>> ParseLayoutText(absl::string_view text);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_CLI_FLAGS_H_
