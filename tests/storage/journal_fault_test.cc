// Crashes at the fault points of storage/fault_injection.h. This test binary re-runs
// itself as a child (StorageFaultChild.Run, skipped unless spawned) with FISHERD_FAULT
// set; the child reports through a pipe every record whose durable callback ran, then
// dies by SIGKILL at the point. Afterwards the parent reads the directory as a restart
// would: every acknowledged record must be there, intact, with contiguous LSNs and no
// torn record (a SIGKILL loses nothing written, only what was not yet written).
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/fault_injection.h"
#include "storage/file_util.h"
#include "storage/journal.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"
#include "tests/storage/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing_storage::ChildResult;
using ::fisherd::testing_storage::FileExists;
using ::fisherd::testing_storage::FileReadResult;
using ::fisherd::testing_storage::ReadAllRecords;
using ::fisherd::testing_storage::ReportLine;
using ::fisherd::testing_storage::RunChild;
using ::fisherd::testing_storage::ScratchDir;
using ::testing::HasSubstr;

constexpr char kModeVariable[] = "FISHERD_TEST_CHILD_MODE";
constexpr char kDirVariable[] = "FISHERD_TEST_CHILD_DIR";
constexpr char kChildFilter[] = "StorageFaultChild.Run";
constexpr int kThreads = 4;
constexpr int kPerThread = 250;
constexpr int kSnapshotRecords = 50;

JournalOptions ChildJournalOptions(const std::string& dir) {
  JournalOptions options;
  options.dir = dir;
  options.segment_bytes = 64 << 10;  // small: groups cross segment boundaries
  options.control_reserve = 4 << 10;
  return options;
}

std::string Payload(int thread, int index) {
  return absl::StrCat("t", thread, "-i", index, "-",
                      std::string((thread * 31 + index * 7) % 3000, 'a' + thread));
}

std::string SnapshotPayload(const std::string& version, int index) {
  return absl::StrCat(version, "-", index, "-", std::string(index * 1000, 'v'));
}

uint64_t RecoveredNextLsn(const std::string& dir) {
  ReadSummary summary;
  absl::Status status = Journal::Read(
      dir, 1, [](uint64_t, uint8_t, absl::string_view) { return absl::OkStatus(); }, &summary);
  if (!status.ok()) {
    ADD_FAILURE() << status;
    std::exit(3);
  }
  return summary.next_lsn;
}

// Appends from kThreads threads; every durable callback reports "<lsn> <thread>
// <index>". Each thread waits for durability every 25 records, so that there are at
// least kPerThread / 25 commits one after another (the ":4" points are reached).
void ChildJournal(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Journal>> journal =
      Journal::Open(ChildJournalOptions(dir), RecoveredNextLsn(dir));
  ASSERT_TRUE(journal.ok()) << journal.status();
  std::mutex apply_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t appended = 0;
        {
          std::lock_guard<std::mutex> lock(apply_mu);
          absl::StatusOr<uint64_t> lsn = (*journal)->Append(
              1, Payload(t, i), i % 5 == 0 ? AppendKind::kControl : AppendKind::kData);
          if (!lsn.ok()) std::abort();
          appended = *lsn;
          (*journal)->WhenDurable(
              appended, [appended, t, i] { ReportLine(absl::StrCat(appended, " ", t, " ", i)); });
        }
        if (i % 25 == 24) (*journal)->WaitDurable(appended);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  (*journal)->Close();
  ReportLine("closed");
}

void ChildSnapshot(const std::string& dir) {
  auto writer = RecordFileWriter::Create(dir + "/snapshot");
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (int i = 0; i < kSnapshotRecords; ++i) {
    ASSERT_TRUE((*writer)->Append(1, i, SnapshotPayload("new", i)).ok());
  }
  ASSERT_TRUE((*writer)->Commit().ok());
  ReportLine("committed");
}

void ChildTruncate(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Journal>> journal =
      Journal::Open(ChildJournalOptions(dir), RecoveredNextLsn(dir));
  ASSERT_TRUE(journal.ok()) << journal.status();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE((*journal)->Append(1, std::string(1500, 'b'), AppendKind::kData).ok());
  }
  const uint64_t rotated = (*journal)->Rotate();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*journal)->Append(2, "after", AppendKind::kControl).ok());
  }
  (*journal)->WaitDurable((*journal)->last_lsn());
  ReportLine(absl::StrCat("dropping ", rotated));
  ASSERT_TRUE((*journal)->DropThrough(rotated).ok());
  ReportLine("dropped");
}

TEST(StorageFaultChild, Run) {
  const char* mode = std::getenv(kModeVariable);
  const char* dir = std::getenv(kDirVariable);
  if (mode == nullptr || dir == nullptr) {
    GTEST_SKIP() << "runs only as the child of the fault tests";
  }
  if (std::string(mode) == "journal") {
    ChildJournal(dir);
  } else if (std::string(mode) == "snapshot") {
    ChildSnapshot(dir);
  } else if (std::string(mode) == "truncate") {
    ChildTruncate(dir);
  } else {
    FAIL() << "unknown mode " << mode;
  }
}

ChildResult Spawn(const std::string& mode, const std::string& dir, const std::string& fault) {
  std::vector<std::string> environment = {absl::StrCat(kModeVariable, "=", mode),
                                          absl::StrCat(kDirVariable, "=", dir)};
  if (!fault.empty()) environment.push_back(absl::StrCat("FISHERD_FAULT=", fault));
  return RunChild(kChildFilter, environment);
}

struct Ack {
  int thread;
  int index;
};

// Parses "<lsn> <thread> <index>" lines; other lines are ignored.
std::map<uint64_t, Ack> ParseAcks(const std::string& reported) {
  std::map<uint64_t, Ack> acks;
  for (absl::string_view line : absl::StrSplit(reported, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    uint64_t lsn;
    Ack ack;
    if (fields.size() == 3 && absl::SimpleAtoi(fields[0], &lsn) &&
        absl::SimpleAtoi(fields[1], &ack.thread) && absl::SimpleAtoi(fields[2], &ack.index)) {
      EXPECT_TRUE(acks.emplace(lsn, ack).second) << "acknowledged twice: " << lsn;
    }
  }
  return acks;
}

struct Recovered {
  std::map<uint64_t, std::string> records;
  ReadSummary summary;
};

Recovered Recover(const std::string& dir) {
  Recovered out;
  absl::Status status = Journal::Read(
      dir, 1,
      [&](uint64_t lsn, uint8_t, absl::string_view payload) {
        out.records[lsn] = std::string(payload);
        return absl::OkStatus();
      },
      &out.summary);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

class JournalFaultTest : public ::testing::TestWithParam<const char*> {};

TEST_P(JournalFaultTest, AcknowledgedRecordsSurviveTheCrash) {
  ScratchDir dir;
  ChildResult child = Spawn("journal", dir.path(), GetParam());
  ASSERT_TRUE(child.killed_by_sigkill) << "status " << child.raw_status << ", stderr:\n"
                                       << child.stderr_text;
  EXPECT_THAT(child.reported, ::testing::Not(HasSubstr("closed")));
  std::map<uint64_t, Ack> acks = ParseAcks(child.reported);

  Recovered recovered = Recover(dir.path());
  EXPECT_FALSE(recovered.summary.torn_tail) << recovered.summary.torn_tail_reason;
  EXPECT_EQ(recovered.summary.next_lsn, recovered.records.size() + 1);
  for (const auto& [lsn, ack] : acks) {
    auto found = recovered.records.find(lsn);
    ASSERT_NE(found, recovered.records.end()) << "acknowledged LSN " << lsn << " lost";
    EXPECT_EQ(found->second, Payload(ack.thread, ack.index)) << lsn;
  }
  std::cout << GetParam() << ": " << acks.size() << " acknowledged, " << recovered.records.size()
            << " recovered\n";

  // The restart continues the log where the recovery ended.
  {
    absl::StatusOr<std::unique_ptr<Journal>> journal =
        Journal::Open(ChildJournalOptions(dir.path()), recovered.summary.next_lsn);
    ASSERT_TRUE(journal.ok()) << journal.status();
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<uint64_t> lsn = (*journal)->Append(2, "restarted", AppendKind::kControl);
      ASSERT_TRUE(lsn.ok());
      EXPECT_EQ(*lsn, recovered.summary.next_lsn + i);
    }
  }
  Recovered again = Recover(dir.path());
  EXPECT_EQ(again.records.size(), recovered.records.size() + 3);
  EXPECT_EQ(again.summary.next_lsn, recovered.summary.next_lsn + 3);
}

INSTANTIATE_TEST_SUITE_P(Points, JournalFaultTest,
                         ::testing::Values("journal-before-write", "journal-before-write:4",
                                           "journal-after-write", "journal-after-write:4",
                                           "journal-after-sync", "journal-after-sync:4"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-' || c == ':') c = '_';
                           }
                           return name;
                         });

TEST(JournalFaultTest, WithoutAFaultTheChildFinishes) {
  ScratchDir dir;
  ChildResult child = Spawn("journal", dir.path(), "");
  ASSERT_TRUE(child.exited_ok) << child.stderr_text;
  EXPECT_THAT(child.reported, HasSubstr("closed"));
  EXPECT_EQ(ParseAcks(child.reported).size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(Recover(dir.path()).records.size(), size_t{kThreads * kPerThread});
}

TEST(JournalFaultTest, UnknownOrMalformedPointsAreReportedOnce) {
  for (const char* fault : {"journal-aftr-sync", "journal-after-sync:x"}) {
    ScratchDir dir;
    ChildResult child = Spawn("journal", dir.path(), fault);
    ASSERT_TRUE(child.exited_ok) << fault << ": " << child.stderr_text;
    const std::string expected = absl::StrCat("FISHERD_FAULT=", fault);
    size_t first = child.stderr_text.find(expected);
    ASSERT_NE(first, std::string::npos) << child.stderr_text;
    EXPECT_EQ(child.stderr_text.find(expected, first + 1), std::string::npos)
        << "reported more than once:\n"
        << child.stderr_text;
  }
}

void WriteOldSnapshot(const std::string& path) {
  auto writer = RecordFileWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  for (int i = 0; i < kSnapshotRecords; ++i) {
    ASSERT_TRUE((*writer)->Append(1, i, SnapshotPayload("old", i)).ok());
  }
  ASSERT_TRUE((*writer)->Commit().ok());
}

void ExpectSnapshot(const std::string& path, const std::string& version) {
  FileReadResult read = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
  ASSERT_TRUE(read.status.ok()) << read.status;
  ASSERT_EQ(read.records.size(), size_t{kSnapshotRecords});
  for (int i = 0; i < kSnapshotRecords; ++i) {
    EXPECT_EQ(read.records[i].payload, SnapshotPayload(version, i));
  }
}

TEST(SnapshotFaultTest, CrashBeforeRenameKeepsTheOldSnapshot) {
  ScratchDir dir;
  const std::string path = dir.File("snapshot");
  WriteOldSnapshot(path);
  ChildResult child = Spawn("snapshot", dir.path(), "snapshot-before-rename");
  ASSERT_TRUE(child.killed_by_sigkill) << child.stderr_text;
  EXPECT_THAT(child.reported, ::testing::Not(HasSubstr("committed")));
  ExpectSnapshot(path, "old");
  ASSERT_TRUE(FileExists(path + ".tmp"));  // complete, but never renamed
  ExpectSnapshot(path + ".tmp", "new");
}

TEST(SnapshotFaultTest, CrashBeforeDirectorySyncHasTheNewSnapshot) {
  ScratchDir dir;
  const std::string path = dir.File("snapshot");
  WriteOldSnapshot(path);
  ChildResult child = Spawn("snapshot", dir.path(), "snapshot-before-dir-sync");
  ASSERT_TRUE(child.killed_by_sigkill) << child.stderr_text;
  ExpectSnapshot(path, "new");
  EXPECT_FALSE(FileExists(path + ".tmp"));
}

TEST(TruncateFaultTest, CrashBeforeTruncateKeepsEverySegment) {
  ScratchDir dir;
  ChildResult child = Spawn("truncate", dir.path(), "journal-before-truncate");
  ASSERT_TRUE(child.killed_by_sigkill) << child.stderr_text;
  EXPECT_THAT(child.reported, HasSubstr("dropping 100"));
  EXPECT_THAT(child.reported, ::testing::Not(HasSubstr("dropped")));
  Recovered recovered = Recover(dir.path());
  EXPECT_EQ(recovered.records.size(), 105u);
  EXPECT_EQ(recovered.summary.next_lsn, 106u);
  EXPECT_GE(recovered.summary.segments, 4u);

  // Without the fault the same run drops the old segments.
  ScratchDir clean;
  ChildResult finished = Spawn("truncate", clean.path(), "");
  ASSERT_TRUE(finished.exited_ok) << finished.stderr_text;
  EXPECT_THAT(finished.reported, HasSubstr("dropped"));
  EXPECT_THAT(testing_storage::ListDir(clean.path()), ::testing::ElementsAre(SegmentFileName(101)));
}

}  // namespace
}  // namespace fisherd
