// Naming and listing of a journal's segment files, "<first LSN as 20 digits>.wal": the
// zero padding makes the names sort as their LSNs do, for people and for ls.
#ifndef FISHERD_STORAGE_SEGMENT_FILES_H_
#define FISHERD_STORAGE_SEGMENT_FILES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fisherd {

struct SegmentFile {
  uint64_t first_lsn = 0;
  std::string path;
};

// "00000000000000000042.wal" for 42.
std::string SegmentFileName(uint64_t first_lsn);

// The first LSN of a segment file name, or nullopt when the name is not one.
std::optional<uint64_t> ParseSegmentFileName(absl::string_view name);

// The segment files of dir in LSN order; other entries are ignored. FAILED_PRECONDITION
// (naming dir and the errno text) when dir cannot be listed.
absl::StatusOr<std::vector<SegmentFile>> ListSegments(const std::string& dir);

}  // namespace fisherd

#endif  // FISHERD_STORAGE_SEGMENT_FILES_H_
