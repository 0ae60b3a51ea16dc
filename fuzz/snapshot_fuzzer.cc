// Snapshot files (server/snapshot_file.h): a fuzzed file, its frames' checksums fixed
// when the flags say so, is checked by VerifySnapshotFile and read by SnapshotReader;
// when its header opens, a session of the header's config is created the way recovery
// does (SessionRegistry::Recreate, under small limits) and restored from it, then read
// back (stats, summary, a product, a step) and written to a new snapshot that must
// verify and restore to the same counters.
//
// Input: [flags u8: bit 0 fix checksums][file bytes...]
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "fuzz/layouts.h"
#include "server/session_registry.h"
#include "server/snapshot_file.h"

namespace {}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const uint8_t flags = in.U8();
  std::string file = in.Rest();
  if (flags & 1) fisherd::fuzz::FixRecordChecksums(&file);
  const std::string& dir = fisherd::fuzz::ScratchDir();
  const std::string path = dir + "/" + fisherd::server::SnapshotFileName("s", 1);
  fisherd::fuzz::WriteFileOrDie(path, file);

  const absl::Status verified = fisherd::server::VerifySnapshotFile(path);
  if (fisherd::fuzz::Verbose()) std::fprintf(stderr, "verify: %s\n", verified.ToString().c_str());
  if (!verified.ok()) FUZZ_CHECK(verified.code() == absl::StatusCode::kDataLoss);

  auto reader = fisherd::server::SnapshotReader::Open(path);
  if (!reader.ok()) {
    FUZZ_CHECK(reader.status().code() == absl::StatusCode::kDataLoss);
    FUZZ_CHECK(!verified.ok());
    return 0;
  }
  const fisherd::durable::v1::SnapshotHeader header = (*reader)->header();
  fisherd::server::SessionRegistry registry(fisherd::fuzz::SmallLimits());
  auto entry = registry.Recreate("s", header.config(), header.incarnation());
  if (!entry.ok()) return 0;
  fisherd::Session& session = *entry->session;
  const absl::Status restored = (*reader)->Restore(session);
  if (!restored.ok()) {
    FUZZ_CHECK(restored.code() == absl::StatusCode::kDataLoss);
    FUZZ_CHECK(!verified.ok() || !restored.message().empty());
    return 0;
  }
  FUZZ_CHECK(verified.ok());

  const fisherd::SessionStatsSnapshot stats = session.Stats();
  session.Summarize(true).IgnoreError();
  const Eigen::VectorXd v = Eigen::VectorXd::Ones(session.options().dim);
  session.FisherVectorProduct(v).IgnoreError();

  // Round trip: what was restored saves to a snapshot that verifies and restores to the
  // same counters.
  const std::string copy = dir + "/" + fisherd::server::SnapshotFileName("s", 2);
  absl::Status written;
  session.SaveState(
      [&](const fisherd::SessionCounters& counters, fisherd::ScoreStatistics& statistics) {
        written = fisherd::server::WriteSnapshot(copy, "s", header.incarnation(), header.config(),
                                                 counters, statistics);
      });
  FUZZ_CHECK(written.ok());
  const absl::Status reverified = fisherd::server::VerifySnapshotFile(copy);
  if (!reverified.ok()) std::fprintf(stderr, "%s\n", reverified.ToString().c_str());
  FUZZ_CHECK(reverified.ok());
  auto reread = fisherd::server::SnapshotReader::Open(copy);
  FUZZ_CHECK(reread.ok());
  fisherd::server::SessionRegistry registry2(fisherd::fuzz::SmallLimits());
  auto entry2 = registry2.Recreate("s", header.config(), header.incarnation());
  FUZZ_CHECK(entry2.ok());
  const absl::Status restored2 = (*reread)->Restore(*entry2->session);
  if (!restored2.ok()) std::fprintf(stderr, "%s\n", restored2.ToString().c_str());
  FUZZ_CHECK(restored2.ok());
  const fisherd::SessionStatsSnapshot stats2 = entry2->session->Stats();
  FUZZ_CHECK(stats2.sample_count == stats.sample_count);
  FUZZ_CHECK(stats2.step_count == stats.step_count);
  FUZZ_CHECK(stats2.worker_sequences == stats.worker_sequences);

  // The restored session keeps working: a step with a gradient of ones.
  fisherd::StepOptions step;
  step.damping = 0.1;
  session.Step(v, step).IgnoreError();
  return 0;
}
