// Journal::Read: recovery's replay of the segments in a directory.
#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/journal.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"

namespace fisherd {

absl::Status Journal::Read(const std::string& dir, uint64_t from_lsn, const Visitor& visit,
                           ReadSummary* summary) {
  *summary = ReadSummary();
  absl::StatusOr<std::vector<SegmentFile>> listed = ListSegments(dir);
  if (!listed.ok()) return listed.status();
  const std::vector<SegmentFile>& segments = *listed;
  summary->segments = segments.size();
  // from_lsn 0: whatever is kept. LSNs start at 1.
  const uint64_t from =
      from_lsn > 0 ? from_lsn : (segments.empty() ? 1 : segments.front().first_lsn);
  if (segments.empty()) {
    summary->first_lsn = from;
    summary->next_lsn = from;
    return absl::OkStatus();
  }
  summary->first_lsn = segments.front().first_lsn;
  if (segments.front().first_lsn > from) {
    return absl::DataLossError(absl::StrCat(segments.front().path, ": the log starts at LSN ",
                                            segments.front().first_lsn, ", but records from LSN ",
                                            from, " are needed"));
  }

  uint64_t next = segments.front().first_lsn;  // the LSN the next record must have
  // A segment that does not continue the LSNs is allowed only if neither it nor any
  // segment after it holds a record: Append created it (before anything was queued
  // for it) and the process died before the records of the earlier segment that were
  // to precede its own were written. Open removes such segments.
  const SegmentFile* empty_after_end = nullptr;
  // The torn tail of the latest segment that continued the LSNs: the log's torn tail,
  // unless a later segment continues from it (a restart superseded it).
  bool torn = false;
  // Where the latest segment that continued the LSNs ends, so that a gap names the
  // place the missing record should have been (the damage is there, not in the next
  // segment).
  std::string previous_path;
  uint64_t previous_end = 0;
  std::string previous_reason;
  auto supersede_torn = [&] {
    if (torn) ++summary->superseded_torn_tails;
    torn = false;
  };
  for (size_t i = 0; i < segments.size(); ++i) {
    const SegmentFile& segment = segments[i];
    const bool last = i + 1 == segments.size();
    const bool continues = i == 0 || segment.first_lsn == next;
    auto gap = [&] {
      const SegmentFile& first_bad = empty_after_end != nullptr ? *empty_after_end : segment;
      return absl::DataLossError(absl::StrCat(
          previous_path, ": offset ", previous_end, ": the records end at LSN ", next - 1,
          previous_reason.empty() ? std::string()
                                  : absl::StrCat(" (the record there: ", previous_reason, ")"),
          ", but the next segment ", first_bad.path, " starts at LSN ", first_bad.first_lsn,
          ": records ", next, " to ", first_bad.first_lsn - 1, " are missing or damaged",
          empty_after_end != nullptr ? absl::StrCat(" (and ", segment.path, " holds records)")
                                     : std::string()));
    };
    // A segment that starts inside the records already read was not created by Append
    // (it numbers a new segment after the records before it): damage, not a crash. Found
    // by fuzz/journal_fuzzer.cc: Read accepted such an empty segment as one "after the
    // end", Open left it (it is below next_lsn), and the next Read failed on it.
    if (!continues && segment.first_lsn < next) {
      return absl::DataLossError(absl::StrCat(segment.path, ": the segment starts at LSN ",
                                              segment.first_lsn, ", but ", previous_path,
                                              " already holds records up to LSN ", next - 1));
    }
    if (continues) supersede_torn();
    if (continues && !last && segments[i + 1].first_lsn <= from) {
      next = segments[i + 1].first_lsn;  // nothing needed in this one
      continue;
    }
    // A torn record can end any segment that was the last one at a crash; if this one
    // is not the last now, the check on the next segment's first LSN makes sure that
    // a restart reused the torn record's LSN (it was never acknowledged).
    absl::StatusOr<std::unique_ptr<RecordFileReader>> reader =
        RecordFileReader::Open(segment.path, TailPolicy::kAllowTornTail);
    if (!reader.ok()) return reader.status();
    Record record;
    for (;;) {
      absl::StatusOr<bool> more = (*reader)->Next(&record);
      if (!more.ok()) return more.status();
      if (!*more) break;
      if (!continues || empty_after_end != nullptr) return gap();
      if (record.sequence != next) {
        return absl::DataLossError(absl::StrCat(segment.path, ": offset ", record.offset, ": LSN ",
                                                record.sequence, " where LSN ", next,
                                                " was expected"));
      }
      if (next >= from) {
        absl::Status status = visit(next, record.type, record.payload);
        if (!status.ok()) return status;
        ++summary->records;
        summary->bytes += EncodedRecordSize(record.payload.size());
      }
      ++next;
    }
    if (!continues) {
      if (empty_after_end == nullptr) empty_after_end = &segment;
      ++summary->empty_segments_after_end;
      continue;
    }
    previous_path = segment.path;
    previous_end = (*reader)->valid_end();
    previous_reason = (*reader)->torn_tail() ? (*reader)->torn_reason() : std::string();
    if ((*reader)->torn_tail()) {
      torn = true;
      summary->torn_tail_file = segment.path;
      summary->torn_tail_offset = (*reader)->valid_end();
      summary->torn_tail_reason = (*reader)->torn_reason();
    }
  }
  summary->torn_tail = torn;
  if (!torn) {
    summary->torn_tail_file.clear();
    summary->torn_tail_offset = 0;
    summary->torn_tail_reason.clear();
  }
  summary->next_lsn = std::max(next, from);
  return absl::OkStatus();
}

}  // namespace fisherd
