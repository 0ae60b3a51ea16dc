#include "storage/segment_files.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/file_util.h"

namespace fisherd {
namespace {

constexpr absl::string_view kSuffix = ".wal";
constexpr size_t kDigits = 20;  // enough for any uint64_t

}  // namespace

std::string SegmentFileName(uint64_t first_lsn) {
  return absl::StrFormat("%020u%s", first_lsn, kSuffix);
}

std::optional<uint64_t> ParseSegmentFileName(absl::string_view name) {
  if (name.size() != kDigits + kSuffix.size() || !absl::EndsWith(name, kSuffix)) {
    return std::nullopt;
  }
  absl::string_view digits = name.substr(0, kDigits);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return absl::ascii_isdigit(c); })) {
    return std::nullopt;
  }
  uint64_t lsn = 0;
  if (!absl::SimpleAtoi(digits, &lsn)) return std::nullopt;  // over 2^64 - 1
  return lsn;
}

absl::StatusOr<std::vector<SegmentFile>> ListSegments(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir);
  if (!names.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal directory ", dir, ": ", names.status().message()));
  }
  std::vector<SegmentFile> segments;
  for (const std::string& name : *names) {
    std::optional<uint64_t> lsn = ParseSegmentFileName(name);
    if (lsn.has_value()) segments.push_back({*lsn, absl::StrCat(dir, "/", name)});
  }
  std::sort(segments.begin(), segments.end(),
            [](const SegmentFile& a, const SegmentFile& b) { return a.first_lsn < b.first_lsn; });
  return segments;
}

}  // namespace fisherd
