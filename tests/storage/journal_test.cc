// Journal: group commit from many threads, durable callbacks, recovery with Read,
// reopening after a torn tail, rotation and truncation, oversized records.
#include "storage/journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"
#include "tests/storage/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing_storage::FileSize;
using ::fisherd::testing_storage::ListDir;
using ::fisherd::testing_storage::ScratchDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Replayed {
  std::vector<uint64_t> lsns;
  std::map<uint64_t, std::pair<uint8_t, std::string>> records;
  ReadSummary summary;
  absl::Status status;
};

Replayed ReadJournal(const std::string& dir, uint64_t from_lsn) {
  Replayed out;
  out.status = Journal::Read(
      dir, from_lsn,
      [&](uint64_t lsn, uint8_t type, absl::string_view payload) {
        out.lsns.push_back(lsn);
        out.records[lsn] = {type, std::string(payload)};
        return absl::OkStatus();
      },
      &out.summary);
  return out;
}

JournalOptions SmallSegments(const std::string& dir) {
  JournalOptions options;
  options.dir = dir;
  options.segment_bytes = 64 << 10;
  options.control_reserve = 4 << 10;
  return options;
}

std::unique_ptr<Journal> OpenOrDie(const JournalOptions& options, uint64_t next_lsn) {
  absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(options, next_lsn);
  EXPECT_TRUE(journal.ok()) << journal.status();
  return journal.ok() ? std::move(*journal) : nullptr;
}

uint64_t AppendOrDie(Journal& journal, uint8_t type, std::string payload,
                     AppendKind kind = AppendKind::kData) {
  absl::StatusOr<uint64_t> lsn = journal.Append(type, std::move(payload), kind);
  EXPECT_TRUE(lsn.ok()) << lsn.status();
  return lsn.ok() ? *lsn : 0;
}

std::vector<uint64_t> SegmentLsns(const std::string& dir) {
  std::vector<uint64_t> lsns;
  for (const std::string& name : ListDir(dir)) {
    std::optional<uint64_t> lsn = ParseSegmentFileName(name);
    if (lsn.has_value()) lsns.push_back(*lsn);
  }
  return lsns;
}

TEST(SegmentFilesTest, NamesSortAsLsnsAndParseBack) {
  EXPECT_EQ(SegmentFileName(42), "00000000000000000042.wal");
  EXPECT_EQ(ParseSegmentFileName("00000000000000000042.wal"), 42u);
  EXPECT_EQ(ParseSegmentFileName(SegmentFileName(UINT64_MAX)), UINT64_MAX);
  EXPECT_FALSE(ParseSegmentFileName("0000000000000000042.wal").has_value());
  EXPECT_FALSE(ParseSegmentFileName("00000000000000000042.wal.tmp").has_value());
  EXPECT_FALSE(ParseSegmentFileName("0000000000000000004x.wal").has_value());
  EXPECT_FALSE(ParseSegmentFileName("99999999999999999999.wal").has_value());
}

TEST(JournalTest, AppendThenReadReturnsExactlyWhatWasAppended) {
  ScratchDir dir;
  std::vector<std::string> payloads;
  {
    std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
    ASSERT_NE(journal, nullptr);
    EXPECT_EQ(journal->last_lsn(), 0u);
    EXPECT_EQ(journal->durable_lsn(), 0u);
    for (uint64_t i = 1; i <= 300; ++i) {
      payloads.push_back(std::string(i * 7 % 900, static_cast<char>('a' + i % 26)));
      EXPECT_EQ(AppendOrDie(*journal, static_cast<uint8_t>(1 + i % 3), payloads.back()), i);
    }
    EXPECT_EQ(journal->last_lsn(), 300u);
    journal->WaitDurable(300);
    EXPECT_EQ(journal->durable_lsn(), 300u);
    JournalStats stats = journal->stats();
    EXPECT_EQ(stats.records, 300u);
    uint64_t bytes = 0;
    for (const std::string& payload : payloads) bytes += EncodedRecordSize(payload.size());
    EXPECT_EQ(stats.bytes_written, bytes);
    EXPECT_GT(stats.segments_created, 1u);  // 64 KiB segments
  }
  Replayed replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  ASSERT_EQ(replayed.lsns.size(), 300u);
  for (uint64_t i = 1; i <= 300; ++i) {
    EXPECT_EQ(replayed.lsns[i - 1], i);
    EXPECT_EQ(replayed.records[i].first, 1 + i % 3);
    EXPECT_EQ(replayed.records[i].second, payloads[i - 1]);
  }
  EXPECT_EQ(replayed.summary.next_lsn, 301u);
  EXPECT_EQ(replayed.summary.records, 300u);
  EXPECT_FALSE(replayed.summary.torn_tail);
  EXPECT_EQ(replayed.summary.segments, SegmentLsns(dir.path()).size());

  // From the middle.
  Replayed tail = ReadJournal(dir.path(), 250);
  ASSERT_TRUE(tail.status.ok()) << tail.status;
  ASSERT_EQ(tail.lsns.size(), 51u);
  EXPECT_EQ(tail.lsns.front(), 250u);
  EXPECT_EQ(tail.summary.next_lsn, 301u);
}

TEST(JournalTest, EmptyDirectoryReadsAsNothingFromFromLsn) {
  ScratchDir dir;
  Replayed replayed = ReadJournal(dir.path(), 17);
  ASSERT_TRUE(replayed.status.ok());
  EXPECT_TRUE(replayed.lsns.empty());
  EXPECT_EQ(replayed.summary.next_lsn, 17u);
  EXPECT_EQ(replayed.summary.first_lsn, 17u);
  Replayed from_zero = ReadJournal(dir.path(), 0);
  EXPECT_EQ(from_zero.summary.next_lsn, 1u);
  EXPECT_EQ(from_zero.summary.first_lsn, 1u);
}

TEST(JournalTest, ConcurrentAppendsGroupCommitAndCallbacksFireOnceInLsnOrder) {
  ScratchDir dir;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 400;
  std::mutex apply_mu;  // the caller's lock: log order = apply order
  std::map<uint64_t, std::string> appended;
  std::mutex fired_mu;
  std::vector<uint64_t> fired;
  JournalStats stats;
  {
    JournalOptions options = SmallSegments(dir.path());
    options.segment_bytes = 256 << 10;
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    ASSERT_NE(journal, nullptr);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          std::string payload =
              absl::StrCat("thread ", t, " record ", i, " ", std::string(i % 200, 'p'));
          uint64_t lsn = 0;
          {
            std::lock_guard<std::mutex> lock(apply_mu);
            absl::StatusOr<uint64_t> appended_lsn =
                journal->Append(1, payload, i % 10 == 0 ? AppendKind::kControl : AppendKind::kData);
            ASSERT_TRUE(appended_lsn.ok()) << appended_lsn.status();
            lsn = *appended_lsn;
            appended[lsn] = payload;
            journal->WhenDurable(lsn, [&, lsn] {
              std::lock_guard<std::mutex> fired_lock(fired_mu);
              fired.push_back(lsn);
            });
          }
          // As a handler waiting for its acknowledgement now and then: many commits
          // one after another, each carrying what the other threads queued meanwhile.
          if (i % 20 == 19) journal->WaitDurable(lsn);
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    journal->Close();
    stats = journal->stats();
  }
  constexpr uint64_t kTotal = kThreads * kPerThread;
  ASSERT_EQ(fired.size(), kTotal);
  for (uint64_t i = 0; i < kTotal; ++i) ASSERT_EQ(fired[i], i + 1) << "callback order";
  EXPECT_EQ(stats.records, kTotal);
  EXPECT_GE(stats.commits, kPerThread / 20);
  const double per_commit = static_cast<double>(stats.records) / stats.commits;
  EXPECT_GT(per_commit, 1.0) << "no group commit: " << stats.commits << " commits";
  EXPECT_GE(stats.syncs, stats.commits);
  std::cout << "records " << stats.records << ", commits " << stats.commits << ", syncs "
            << stats.syncs << ", records per commit " << per_commit << "\n";

  Replayed replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  ASSERT_EQ(replayed.lsns.size(), kTotal);
  for (uint64_t lsn = 1; lsn <= kTotal; ++lsn) {
    EXPECT_EQ(replayed.lsns[lsn - 1], lsn);
    EXPECT_EQ(replayed.records[lsn].second, appended[lsn]);
  }
}

TEST(JournalTest, WhenDurableRunsAtOnceForDurableLsnsAndLsnZero) {
  ScratchDir dir;
  std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
  ASSERT_NE(journal, nullptr);
  bool ran = false;
  journal->WhenDurable(0, [&] { ran = true; });
  EXPECT_TRUE(ran);
  uint64_t lsn = AppendOrDie(*journal, 1, "x");
  journal->WaitDurable(lsn);
  EXPECT_GE(journal->durable_lsn(), lsn);
  // The writer may still be finishing this LSN's callbacks; wait for a later one.
  std::atomic<bool> later{false};
  uint64_t next = AppendOrDie(*journal, 1, "y");
  journal->WhenDurable(next, [&] { later = true; });
  journal->WaitDurable(next);
  while (!later) std::this_thread::yield();
  std::thread::id ran_on;
  journal->WhenDurable(lsn, [&] { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(JournalTest, AppendRejectsTypeZeroAndAppendsAfterClose) {
  ScratchDir dir;
  std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
  ASSERT_NE(journal, nullptr);
  EXPECT_EQ(journal->Append(0, "x", AppendKind::kData).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(journal->last_lsn(), 0u);
  journal->Close();
  journal->Close();  // idempotent
  EXPECT_EQ(journal->Append(1, "x", AppendKind::kData).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(JournalTest, RotateAndDropThroughDeleteExactlyTheOlderSegments) {
  ScratchDir dir;
  std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
  ASSERT_NE(journal, nullptr);
  for (int i = 0; i < 100; ++i) AppendOrDie(*journal, 1, std::string(1500, 'a'));
  const std::vector<uint64_t> before = SegmentLsns(dir.path());
  ASSERT_GE(before.size(), 3u);
  const uint64_t rotated = journal->Rotate();
  EXPECT_EQ(rotated, 100u);
  EXPECT_EQ(journal->Rotate(), 100u);  // twice: still one new segment
  for (int i = 0; i < 5; ++i) AppendOrDie(*journal, 2, "after");
  EXPECT_EQ(SegmentLsns(dir.path()).back(), rotated + 1);
  EXPECT_EQ(SegmentLsns(dir.path()).size(), before.size() + 1);

  // Not yet durable: refused.
  EXPECT_EQ(journal->DropThrough(journal->last_lsn() + 1).code(),
            absl::StatusCode::kFailedPrecondition);
  journal->WaitDurable(journal->last_lsn());

  // Through an LSN inside the second segment: only the first segment goes.
  ASSERT_TRUE(journal->DropThrough(before[2] - 2).ok());
  std::vector<uint64_t> expected(before.begin() + 1, before.end());
  expected.push_back(rotated + 1);
  EXPECT_EQ(SegmentLsns(dir.path()), expected);

  ASSERT_TRUE(journal->DropThrough(rotated).ok());
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(rotated + 1));
  ASSERT_TRUE(journal->DropThrough(rotated).ok());  // nothing more to drop
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(rotated + 1));
  // Never the active segment, even through its last LSN.
  ASSERT_TRUE(journal->DropThrough(journal->last_lsn()).ok());
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(rotated + 1));
  EXPECT_EQ(journal->stats().segments_deleted, before.size());
  journal->Close();

  Replayed replayed = ReadJournal(dir.path(), rotated + 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  EXPECT_EQ(replayed.lsns.size(), 5u);
  EXPECT_EQ(replayed.summary.next_lsn, rotated + 6);
  EXPECT_EQ(replayed.summary.first_lsn, rotated + 1);
  // Records before the snapshot's LSN are gone: asking for them is data loss.
  Replayed from_start = ReadJournal(dir.path(), 1);
  EXPECT_EQ(from_start.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(from_start.status.message(), HasSubstr("the log starts at LSN"));
  // From 0: whatever is kept.
  Replayed kept = ReadJournal(dir.path(), 0);
  ASSERT_TRUE(kept.status.ok()) << kept.status;
  EXPECT_EQ(kept.lsns.front(), rotated + 1);
  EXPECT_EQ(kept.lsns.size(), 5u);
  EXPECT_EQ(kept.summary.first_lsn, rotated + 1);
  EXPECT_EQ(kept.summary.next_lsn, rotated + 6);
}

TEST(JournalTest, DropThroughAfterReopenDeletesRecoveredSegments) {
  ScratchDir dir;
  {
    std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
    for (int i = 0; i < 60; ++i) AppendOrDie(*journal, 1, std::string(2000, 'r'));
  }
  const std::vector<uint64_t> old_segments = SegmentLsns(dir.path());
  ASSERT_GE(old_segments.size(), 2u);
  std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 61);
  ASSERT_NE(journal, nullptr);
  AppendOrDie(*journal, 1, "new");
  journal->WaitDurable(61);
  ASSERT_TRUE(journal->DropThrough(60).ok());
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(61));
}

TEST(JournalTest, ReopenAfterATornTailContinuesTheLog) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());
  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    for (int i = 0; i < 10; ++i) AppendOrDie(*journal, 1, absl::StrCat("first ", i));
  }
  // A crash mid-write: half of record 11 at the end of the (only) segment.
  Replayed clean = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(clean.status.ok());
  const std::string segment = dir.File(SegmentFileName(1));
  uint64_t end = 0;
  {
    auto reader = RecordFileReader::Open(segment, TailPolicy::kAllowTornTail);
    Record record;
    while (*(*reader)->Next(&record)) {
    }
    end = (*reader)->valid_end();
  }
  std::string torn;
  AppendRecord(1, 11, std::string(3000, 't'), &torn);
  torn.resize(torn.size() / 2);
  int fd = open(segment.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, torn.data(), torn.size(), static_cast<off_t>(end)),
            static_cast<ssize_t>(torn.size()));
  close(fd);

  Replayed recovered = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(recovered.status.ok()) << recovered.status;
  EXPECT_EQ(recovered.lsns.size(), 10u);
  EXPECT_TRUE(recovered.summary.torn_tail);
  EXPECT_EQ(recovered.summary.torn_tail_file, segment);
  EXPECT_EQ(recovered.summary.torn_tail_offset, end);
  EXPECT_EQ(recovered.summary.torn_tail_reason, "checksum mismatch");
  EXPECT_EQ(recovered.summary.next_lsn, 11u);

  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, recovered.summary.next_lsn);
    ASSERT_NE(journal, nullptr);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(AppendOrDie(*journal, 2, "second"), 11u + i);
  }
  // The torn record stays behind in the old segment; the new one reuses its LSN.
  Replayed again = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.lsns.size(), 15u);
  EXPECT_EQ(again.lsns.back(), 15u);
  EXPECT_FALSE(again.summary.torn_tail);
  EXPECT_EQ(again.summary.superseded_torn_tails, 1u);
  EXPECT_EQ(again.summary.next_lsn, 16u);
}

// A crash after Append created a segment but before the records ahead of its own (in
// the previous segment) were written leaves an empty segment past the end of the log.
TEST(JournalTest, EmptySegmentsAfterTheEndAreIgnoredAndRemovedByOpen) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());
  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    for (int i = 0; i < 10; ++i) AppendOrDie(*journal, 1, "r");
  }
  const std::string empty = dir.File(SegmentFileName(20));
  testing_storage::WriteFile(empty, std::string(options.segment_bytes, '\0'));

  Replayed replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  EXPECT_EQ(replayed.lsns.size(), 10u);
  EXPECT_EQ(replayed.summary.next_lsn, 11u);
  EXPECT_EQ(replayed.summary.empty_segments_after_end, 1u);
  EXPECT_FALSE(replayed.summary.torn_tail);

  // With a torn record before it, that record is still the log's torn tail.
  const std::string first = dir.File(SegmentFileName(1));
  const std::string intact = testing_storage::ReadFile(first);
  std::string torn = intact;
  std::string record;
  AppendRecord(1, 11, std::string(500, 't'), &record);
  const uint64_t end = 10 * (kRecordHeaderSize + 1);
  torn.replace(end, 200, record.substr(0, 200));
  testing_storage::WriteFile(first, torn);
  replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  EXPECT_TRUE(replayed.summary.torn_tail);
  EXPECT_EQ(replayed.summary.torn_tail_file, first);
  EXPECT_EQ(replayed.summary.torn_tail_offset, end);
  EXPECT_EQ(replayed.summary.superseded_torn_tails, 0u);
  testing_storage::WriteFile(first, intact);

  // But a segment with records after the gap is data loss.
  std::string with_records;
  AppendRecord(1, 30, "late", &with_records);
  testing_storage::WriteFile(dir.File(SegmentFileName(30)), with_records);
  Replayed gap = ReadJournal(dir.path(), 1);
  EXPECT_EQ(gap.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(gap.status.message(), HasSubstr("the next segment " + empty + " starts at LSN 20"));
  ASSERT_EQ(unlink(dir.File(SegmentFileName(30)).c_str()), 0);

  std::unique_ptr<Journal> journal = OpenOrDie(options, 11);
  ASSERT_NE(journal, nullptr);
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1, 11));
  EXPECT_EQ(AppendOrDie(*journal, 1, "next"), 11u);
  journal->Close();
  replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  EXPECT_EQ(replayed.lsns.size(), 11u);
  EXPECT_EQ(replayed.summary.empty_segments_after_end, 0u);
}

// Found by fuzz/journal_fuzzer.cc: an empty segment named inside the records already
// read (Append never creates one) was accepted as one "after the end"; Open kept it,
// being below next_lsn, so the log recovered once and failed on the next restart.
TEST(JournalTest, EmptySegmentStartingInsideTheRecordsIsDataLoss) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());
  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    for (int i = 0; i < 10; ++i) AppendOrDie(*journal, 1, "r");
  }
  const std::string overlapping = dir.File(SegmentFileName(5));
  testing_storage::WriteFile(overlapping, std::string(4096, '\0'));
  Replayed replayed = ReadJournal(dir.path(), 1);
  EXPECT_EQ(replayed.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(replayed.status.message(), HasSubstr(overlapping + ": the segment starts at LSN 5"));
  EXPECT_THAT(replayed.status.message(), HasSubstr("already holds records up to LSN 10"));
}

TEST(JournalTest, DamageOutsideTheTailIsDataLossNamingFileAndOffset) {
  ScratchDir dir;
  {
    std::unique_ptr<Journal> journal = OpenOrDie(SmallSegments(dir.path()), 1);
    for (int i = 0; i < 100; ++i) AppendOrDie(*journal, 1, std::string(1500, 'd'));
  }
  const std::vector<uint64_t> segments = SegmentLsns(dir.path());
  ASSERT_GE(segments.size(), 3u);
  const std::string first = dir.File(SegmentFileName(segments[0]));
  const std::string contents = testing_storage::ReadFile(first);

  // The last record of a full, older segment torn: its LSN is missing from the log.
  {
    auto reader = RecordFileReader::Open(first, TailPolicy::kAllowTornTail);
    Record record;
    uint64_t last_offset = 0;
    while (*(*reader)->Next(&record)) last_offset = record.offset;
    std::string damaged = contents;
    damaged[last_offset + 100] ^= 4;
    testing_storage::WriteFile(first, damaged);
    Replayed replayed = ReadJournal(dir.path(), 1);
    EXPECT_EQ(replayed.status.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(replayed.status.message(), HasSubstr(dir.File(SegmentFileName(segments[1]))));
    EXPECT_THAT(replayed.status.message(), HasSubstr("starts at LSN"));
  }
  // A record in the middle of a segment.
  {
    std::string damaged = contents;
    damaged[3 * (kRecordHeaderSize + 1500) + 50] ^= 1;
    testing_storage::WriteFile(first, damaged);
    Replayed replayed = ReadJournal(dir.path(), 1);
    EXPECT_EQ(replayed.status.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(replayed.status.message(),
                HasSubstr(absl::StrCat(first, ": offset ", 3 * (kRecordHeaderSize + 1500),
                                       ": checksum mismatch")));
    EXPECT_EQ(replayed.lsns.size(), 3u);
  }
  testing_storage::WriteFile(first, contents);
  ASSERT_TRUE(ReadJournal(dir.path(), 1).status.ok());
  // A missing segment in the middle: a gap in the LSNs.
  ASSERT_EQ(unlink(dir.File(SegmentFileName(segments[1])).c_str()), 0);
  Replayed gap = ReadJournal(dir.path(), 1);
  EXPECT_EQ(gap.status.code(), absl::StatusCode::kDataLoss);
  // The message names where the missing records should have been (the end of the
  // segment before the gap) and the segment after it.
  EXPECT_THAT(gap.status.message(), HasSubstr(absl::StrCat(first, ": offset ")));
  EXPECT_THAT(gap.status.message(),
              HasSubstr(absl::StrCat("the next segment ", dir.File(SegmentFileName(segments[2])),
                                     " starts at LSN ", segments[2])));
  EXPECT_THAT(gap.status.message(), HasSubstr(absl::StrCat("records ", segments[1], " to ",
                                                           segments[2] - 1, " are missing")));
}

TEST(JournalTest, RecordsLargerThanASegmentGetASegmentOfTheirOwn) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());
  const std::string big(200 << 10, 'B');
  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    // Into the empty first segment: grown in place, no empty segment left behind.
    EXPECT_EQ(AppendOrDie(*journal, 1, big), 1u);
    journal->WaitDurable(1);
    EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1));
    EXPECT_GE(FileSize(dir.File(SegmentFileName(1))),
              big.size() + kRecordHeaderSize + options.control_reserve);
    EXPECT_EQ(AppendOrDie(*journal, 1, "small"), 2u);
    EXPECT_EQ(AppendOrDie(*journal, 1, big, AppendKind::kControl), 3u);
    EXPECT_EQ(AppendOrDie(*journal, 1, "small"), 4u);
  }
  // The small record after the big control record fits behind it.
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1, 3));
  Replayed replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok()) << replayed.status;
  ASSERT_EQ(replayed.lsns.size(), 4u);
  EXPECT_EQ(replayed.records[1].second, big);
  EXPECT_EQ(replayed.records[2].second, "small");
  EXPECT_EQ(replayed.records[3].second, big);
  EXPECT_EQ(replayed.records[4].second, "small");
}

TEST(JournalTest, DataRecordsLeaveTheControlReserve) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());  // 64 KiB, 4 KiB reserve
  std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
  ASSERT_NE(journal, nullptr);
  // 59 KiB of data fits below the reserve; the next KiB of data does not.
  AppendOrDie(*journal, 1, std::string((59 << 10) - kRecordHeaderSize, 'd'));
  AppendOrDie(*journal, 1, std::string((1 << 10) - kRecordHeaderSize, 'd'));
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1));
  AppendOrDie(*journal, 1, std::string(1 << 10, 'd'));
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1, 3));
  // Segment 3 filled to 982 bytes below the data limit; a control record of 3 KiB
  // still fits in the reserve behind it.
  AppendOrDie(*journal, 1, std::string((58 << 10), 'd'));
  AppendOrDie(*journal, 2, std::string(3 << 10, 'c'), AppendKind::kControl);
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1, 3));
}

TEST(JournalTest, OpenErrorsNameThePath) {
  ScratchDir dir;
  JournalOptions options = SmallSegments(dir.File("missing"));
  absl::StatusOr<std::unique_ptr<Journal>> missing = Journal::Open(options, 1);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir.File("missing")));
  EXPECT_THAT(missing.status().message(), HasSubstr("No such file or directory"));

  testing_storage::WriteFile(dir.File("file"), "x");
  options.dir = dir.File("file");
  EXPECT_EQ(Journal::Open(options, 1).status().code(), absl::StatusCode::kFailedPrecondition);

  options = SmallSegments(dir.path());
  options.segment_bytes = options.control_reserve;
  EXPECT_EQ(Journal::Open(options, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Journal::Open(SmallSegments(dir.path()), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(JournalTest, OpenChecksNextLsnAndRemovesEmptyLeftoverSegments) {
  ScratchDir dir;
  const JournalOptions options = SmallSegments(dir.path());
  {
    std::unique_ptr<Journal> journal = OpenOrDie(options, 1);
    for (int i = 0; i < 10; ++i) AppendOrDie(*journal, 1, "r");
  }
  // Not the next_lsn that Read returns.
  for (uint64_t wrong : {1, 5, 10}) {
    absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(options, wrong);
    EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << wrong;
    EXPECT_THAT(journal.status().message(), HasSubstr("next_lsn"));
  }
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1));

  // A segment created just before a crash, nothing written to it.
  { std::unique_ptr<Journal> journal = OpenOrDie(options, 11); }
  EXPECT_THAT(SegmentLsns(dir.path()), ElementsAre(1, 11));
  Replayed replayed = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(replayed.status.ok());
  EXPECT_EQ(replayed.summary.next_lsn, 11u);
  std::unique_ptr<Journal> journal = OpenOrDie(options, 11);
  ASSERT_NE(journal, nullptr);
  EXPECT_EQ(AppendOrDie(*journal, 1, "after"), 11u);
  journal->Close();
  Replayed after = ReadJournal(dir.path(), 1);
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.lsns.size(), 11u);
}

}  // namespace
}  // namespace fisherd
