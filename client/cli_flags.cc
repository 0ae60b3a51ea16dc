#include "client/cli_flags.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fisherd::client {
namespace {

// A positive decimal integer, the whole of `text`.
bool ParseSize(absl::string_view text, uint64_t* value) {
  if (text.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(text[0]))) return false;
  return absl::SimpleAtoi(text, value) && *value >= 1;
}

}  // namespace

absl::StatusOr<fisherd::v1::BlockConfig> ParseBlockSpec(absl::string_view spec) {
  auto bad = [spec](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("block spec \"", spec, "\": ", why,
                     "; expected NAME:dense:DIM, NAME:diagonal:DIM, NAME:low_rank:DIM/ROWS or "
                     "NAME:kronecker:INxOUT[+bias]"));
  };
  const std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  if (parts.size() != 3) return bad("not three ':'-separated parts");
  fisherd::v1::BlockConfig block;
  block.set_name(std::string(absl::StripAsciiWhitespace(parts[0])));
  if (block.name().empty()) return bad("the name is empty");
  const std::string kind = absl::AsciiStrToLower(absl::StripAsciiWhitespace(parts[1]));
  absl::string_view shape = absl::StripAsciiWhitespace(parts[2]);
  uint64_t a = 0, b = 0;
  if (kind == "dense" || kind == "diagonal") {
    if (!ParseSize(shape, &a))
      return bad(absl::StrCat("DIM \"", shape, "\" is not an integer >= 1"));
    block.set_kind(kind == "dense" ? fisherd::v1::BLOCK_KIND_DENSE
                                   : fisherd::v1::BLOCK_KIND_DIAGONAL);
    block.set_dim(a);
  } else if (kind == "low_rank" || kind == "low-rank") {
    const std::vector<absl::string_view> sizes = absl::StrSplit(shape, '/');
    if (sizes.size() != 2 || !ParseSize(sizes[0], &a) || !ParseSize(sizes[1], &b)) {
      return bad(absl::StrCat("\"", shape, "\" is not DIM/ROWS with integers >= 1"));
    }
    block.set_kind(fisherd::v1::BLOCK_KIND_LOW_RANK);
    block.set_dim(a);
    block.set_max_rows(b);
  } else if (kind == "kronecker") {
    const bool bias = absl::ConsumeSuffix(&shape, "+bias");
    const std::vector<absl::string_view> sizes = absl::StrSplit(shape, absl::ByAnyChar("xX"));
    if (sizes.size() != 2 || !ParseSize(sizes[0], &a) || !ParseSize(sizes[1], &b)) {
      return bad(
          absl::StrCat("\"", parts[2], "\" is not INxOUT or INxOUT+bias with integers >= 1"));
    }
    block.set_kind(fisherd::v1::BLOCK_KIND_KRONECKER);
    block.set_in_features(a);
    block.set_out_features(b);
    block.set_bias(bias);
  } else {
    return bad(absl::StrCat("unknown kind \"", parts[1], "\""));
  }
  return block;
}

absl::StatusOr<std::vector<fisherd::v1::BlockConfig>> ParseLayoutText(absl::string_view text) {
  std::vector<fisherd::v1::BlockConfig> blocks;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    const size_t comment = line.find('#');
    if (comment != absl::string_view::npos) line = line.substr(0, comment);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    absl::StatusOr<fisherd::v1::BlockConfig> block = ParseBlockSpec(line);
    if (!block.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": ", block.status().message()));
    }
    blocks.push_back(*std::move(block));
  }
  if (blocks.empty()) return absl::InvalidArgumentError("the layout has no blocks");
  return blocks;
}

}  // namespace fisherd::client
