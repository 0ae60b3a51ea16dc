// The command line of the client tools (fisherctl, fisherd-demo, fisherd-bench): their
// flags are declared on the shared FlagSet (common/flag_set.h, CLI11), here named
// CliFlags. Also the command-line form of a layered session's blocks (ParseBlockSpec).
#ifndef FISHERD_CLIENT_CLI_FLAGS_H_
#define FISHERD_CLIENT_CLI_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/flag_set.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

using CliFlags = ::fisherd::common::FlagSet;

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
