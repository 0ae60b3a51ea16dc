// Recovery of a whole data directory (server/durable_store.h): fuzzed log segments and
// snapshot files, their frames' checksums fixed when the flags say so, are recovered by
// DurableStore::Open into a registry with small limits: durable records.proto parsing
// and replay of creations, deletions, batches and steps into sessions. When recovery
// succeeds, a round of snapshots is taken, the store closed, and a second recovery of
// the same directory must find the same sessions with the same counters.
//
// Input: [segments u8][snapshots u8], then per segment [first LSN u8][flags u8][section],
// then per snapshot [session selector u8][LSN u8][flags u8][section].
// flags bit 0: fix the frames' checksums.
#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <string>

#include "fuzz/fuzz_util.h"
#include "fuzz/layouts.h"
#include "server/durable_store.h"
#include "server/session_registry.h"
#include "server/snapshot_file.h"
#include "storage/segment_files.h"

namespace {

fisherd::server::DurabilityOptions Options(const std::string& dir) {
  fisherd::server::DurabilityOptions options;
  options.data_dir = dir;
  options.snapshot_interval = absl::ZeroDuration();  // only SnapshotAll below
  // The smallest segment JournalOptions accepts (its 1 MiB control reserve + 4 KiB).
  options.segment_bytes = (1 << 20) + 4096;
  return options;
}

struct Found {
  uint64_t samples;
  uint64_t steps;
  std::map<std::string, uint64_t> workers;
  bool operator==(const Found& o) const {
    return samples == o.samples && steps == o.steps && workers == o.workers;
  }
};

std::map<std::string, Found> Sessions(fisherd::server::SessionRegistry& registry) {
  std::map<std::string, Found> out;
  for (const auto& entry : registry.List()) {
    const fisherd::SessionStatsSnapshot stats = entry.session->Stats();
    out[entry.name] = Found{stats.sample_count, stats.step_count, stats.worker_sequences};
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const std::string dir = fisherd::fuzz::ScratchDir() + "/data";
  fisherd::fuzz::RemoveContents(fisherd::fuzz::ScratchDir());
  FUZZ_CHECK(mkdir(dir.c_str(), 0700) == 0);
  FUZZ_CHECK(mkdir((dir + "/log").c_str(), 0700) == 0);
  FUZZ_CHECK(mkdir((dir + "/snapshots").c_str(), 0700) == 0);

  const int segments = in.U8() % 3;
  const int snapshots = in.U8() % 3;
  for (int i = 0; i < segments; ++i) {
    const uint64_t first_lsn = 1 + in.U8() % 16;
    const uint8_t flags = in.U8();
    std::string file = in.Section();
    if (flags & 1) fisherd::fuzz::FixRecordChecksums(&file);
    fisherd::fuzz::WriteFileOrDie(dir + "/log/" + fisherd::SegmentFileName(first_lsn), file);
  }
  static const char* const kIds[] = {"a", "b", "dense", "layered"};
  for (int i = 0; i < snapshots; ++i) {
    const std::string id = kIds[in.U8() % 4];
    const uint64_t lsn = in.U8() % 16;
    const uint8_t flags = in.U8();
    std::string file = in.Section();
    if (flags & 1) fisherd::fuzz::FixRecordChecksums(&file);
    fisherd::fuzz::WriteFileOrDie(dir + "/snapshots/" + fisherd::server::SnapshotFileName(id, lsn),
                                  file);
  }

  std::map<std::string, Found> before;
  {
    fisherd::server::SessionRegistry registry(fisherd::fuzz::SmallLimits());
    fisherd::server::RecoveryReport report;
    auto store = fisherd::server::DurableStore::Open(Options(dir), &registry, &report);
    if (fisherd::fuzz::Verbose()) {
      std::fprintf(stderr, "recovery: %s, %zu sessions\n", store.status().ToString().c_str(),
                   registry.List().size());
    }
    if (!store.ok()) {
      const absl::StatusCode code = store.status().code();
      FUZZ_CHECK(code == absl::StatusCode::kDataLoss ||
                 code == absl::StatusCode::kResourceExhausted ||
                 code == absl::StatusCode::kInvalidArgument ||
                 code == absl::StatusCode::kFailedPrecondition ||
                 code == absl::StatusCode::kAlreadyExists);
      FUZZ_CHECK(!store.status().message().empty());
      return 0;
    }
    before = Sessions(registry);
    const absl::Status snapshot = (*store)->SnapshotAll();
    if (!snapshot.ok()) std::fprintf(stderr, "%s\n", snapshot.ToString().c_str());
    FUZZ_CHECK(snapshot.ok());
    store->reset();
  }
  fisherd::server::SessionRegistry registry(fisherd::fuzz::SmallLimits());
  fisherd::server::RecoveryReport report;
  auto store = fisherd::server::DurableStore::Open(Options(dir), &registry, &report);
  if (!store.ok()) std::fprintf(stderr, "second recovery: %s\n", store.status().ToString().c_str());
  FUZZ_CHECK(store.ok());
  FUZZ_CHECK(Sessions(registry) == before);
  return 0;
}
