// Crash points for tests of durability: the process kills itself at a named point of
// the journal or the snapshot writer, so a test can check what a restart finds there.
//
// FISHERD_FAULT=<point> or FISHERD_FAULT=<point>:<N> makes the N-th time (default the
// first) that <point> is reached raise SIGKILL: nothing is flushed, no destructor or
// atexit handler runs, exactly as if the process had been killed from outside. (Not as
// a power loss: what was written but not fsynced is still in the page cache.)
//
// The variable is read once per process. A value naming an unknown point, or with a
// malformed count, is reported once on stderr, so a typo in a test shows instead of
// silently crashing nowhere. Unset, MaybeCrashAt costs one atomic load.
#ifndef FISHERD_STORAGE_FAULT_INJECTION_H_
#define FISHERD_STORAGE_FAULT_INJECTION_H_

#include "absl/strings/string_view.h"

namespace fisherd {

// The points, named where they are reached.
// Journal writer: before a group's pwritev.
inline constexpr absl::string_view kFaultJournalBeforeWrite = "journal-before-write";
// Journal writer: written, not yet fdatasync'd.
inline constexpr absl::string_view kFaultJournalAfterWrite = "journal-after-write";
// Journal writer: synced, before durable_lsn moves and durable callbacks run.
inline constexpr absl::string_view kFaultJournalAfterSync = "journal-after-sync";
// RecordFileWriter::Commit: the temp file is synced, not yet renamed.
inline constexpr absl::string_view kFaultSnapshotBeforeRename = "snapshot-before-rename";
// RecordFileWriter::Commit: renamed, directory not yet synced.
inline constexpr absl::string_view kFaultSnapshotBeforeDirSync = "snapshot-before-dir-sync";
// Journal::DropThrough: before old segments are deleted.
inline constexpr absl::string_view kFaultJournalBeforeTruncate = "journal-before-truncate";

// The environment variable read.
inline constexpr char kFaultEnvironmentVariable[] = "FISHERD_FAULT";

// Kills the process with SIGKILL when FISHERD_FAULT selects this point and this is the
// selected occurrence. Thread-safe.
void MaybeCrashAt(absl::string_view point);

}  // namespace fisherd

#endif  // FISHERD_STORAGE_FAULT_INJECTION_H_
