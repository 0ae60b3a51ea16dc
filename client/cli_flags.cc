#include "client/cli_flags.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fisherd::client {

absl::StatusOr<CliFlags> CliFlags::Parse(int argc, char** argv,
                                         const std::set<std::string>& repeatable) {
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
    std::vector<std::string>& all = flags.all_values_[name];
    if (!all.empty() && repeatable.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    all.push_back(value);
    flags.values_[name] = value;
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

std::vector<std::string> CliFlags::GetAll(absl::string_view name) {
  known_.emplace(name);
  auto it = all_values_.find(name);
  return it == all_values_.end() ? std::vector<std::string>() : it->second;
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
    return absl::InvalidArgumentError(absl::StrCat(
        "block spec \"", spec, "\": ", why,
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
    if (!ParseSize(shape, &a)) return bad(absl::StrCat("DIM \"", shape, "\" is not an integer >= 1"));
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
      return bad(absl::StrCat("\"", parts[2], "\" is not INxOUT or INxOUT+bias with integers >= 1"));
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
