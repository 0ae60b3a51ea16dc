// A full or read-only data directory, on a tiny tmpfs mounted for the test (root with
// CAP_SYS_ADMIN, as in the project's container; skipped elsewhere): Append refuses with
// RESOURCE_EXHAUSTED before numbering or queueing anything, control records still use
// the reserve, and a snapshot that does not fit leaves the previous one intact.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/file_util.h"
#include "storage/journal.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"
#include "tests/storage/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing_storage::FileExists;
using ::fisherd::testing_storage::FileReadResult;
using ::fisherd::testing_storage::ListDir;
using ::fisherd::testing_storage::ReadAllRecords;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class TinyTmpfsTest : public ::testing::Test {
 protected:
  // Mounts a 2 MiB tmpfs; false (with the reason) when this machine does not allow it.
  bool Mount(const char* options, std::string* why) {
    std::string pattern = ::testing::TempDir() + "fisherd_tmpfs_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      *why = absl::StrCat("mkdtemp: ", std::strerror(errno));
      return false;
    }
    dir_ = pattern;
    if (mount("tmpfs", dir_.c_str(), "tmpfs", 0, options) != 0) {
      *why = absl::StrCat("mounting a tmpfs (", options, ") on ", dir_,
                          " failed: ", std::strerror(errno), " (needs root with CAP_SYS_ADMIN)");
      return false;
    }
    mounted_ = true;
    return true;
  }

  void TearDown() override {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) rmdir(dir_.c_str());
  }

  std::string File(const std::string& name) const { return dir_ + "/" + name; }

  // Fills the file system: writes `path` until ENOSPC.
  void Fill(const std::string& path) {
    int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_APPEND, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::string block(4096, 'f');
    for (;;) {
      ssize_t wrote = write(fd, block.data(), block.size());
      if (wrote < 0) {
        ASSERT_EQ(errno, ENOSPC) << std::strerror(errno);
        break;
      }
    }
    close(fd);
  }

  std::string dir_;
  bool mounted_ = false;
};

#define MOUNT_OR_SKIP(options)                      \
  do {                                              \
    std::string why;                                \
    if (!Mount(options, &why)) GTEST_SKIP() << why; \
  } while (0)

JournalOptions Options(const std::string& dir) {
  JournalOptions options;
  options.dir = dir;
  options.segment_bytes = 256 << 10;
  options.control_reserve = 16 << 10;
  return options;
}

TEST_F(TinyTmpfsTest, AppendOnAFullDiskIsResourceExhaustedAndQueuesNothing) {
  MOUNT_OR_SKIP("size=2m");
  absl::StatusOr<std::unique_ptr<Journal>> opened = Journal::Open(Options(dir_), 1);
  ASSERT_TRUE(opened.ok()) << opened.status();
  Journal& journal = **opened;
  Fill(File("filler"));

  // 11 records of 20 KiB fit below the 16 KiB reserve of the 256 KiB segment.
  const std::string data(20 << 10, 'd');
  for (uint64_t lsn = 1; lsn <= 11; ++lsn) {
    absl::StatusOr<uint64_t> appended = journal.Append(1, data, AppendKind::kData);
    ASSERT_TRUE(appended.ok()) << appended.status();
    EXPECT_EQ(*appended, lsn);
  }
  absl::StatusOr<uint64_t> refused = journal.Append(1, data, AppendKind::kData);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("data directory full: " + dir_));
  EXPECT_THAT(refused.status().message(), HasSubstr(absl::StrCat(256 << 10, " bytes")));
  EXPECT_THAT(refused.status().message(), HasSubstr("No space left on device"));
  EXPECT_EQ(journal.last_lsn(), 11u);  // nothing numbered
  journal.WaitDurable(11);

  // Control records still fit in the reserve, even after a rotation that cannot
  // happen; data records do not.
  absl::StatusOr<uint64_t> control =
      journal.Append(2, std::string(1 << 10, 'c'), AppendKind::kControl);
  ASSERT_TRUE(control.ok()) << control.status();
  EXPECT_EQ(*control, 12u);
  EXPECT_EQ(journal.Rotate(), 12u);
  control = journal.Append(2, "after rotate", AppendKind::kControl);
  ASSERT_TRUE(control.ok()) << control.status();
  EXPECT_EQ(*control, 13u);
  EXPECT_EQ(journal.Append(1, "x", AppendKind::kData).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(ListDir(dir_), ElementsAre(SegmentFileName(1), "filler"));
  journal.WaitDurable(13);
  EXPECT_EQ(journal.stats().records, 13u);

  // Space again: the rotation happens.
  ASSERT_EQ(unlink(File("filler").c_str()), 0);
  absl::StatusOr<uint64_t> resumed = journal.Append(1, data, AppendKind::kData);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(*resumed, 14u);
  EXPECT_THAT(ListDir(dir_), ElementsAre(SegmentFileName(1), SegmentFileName(14)));
  journal.Close();

  ReadSummary summary;
  uint64_t expected = 1;
  absl::Status status = Journal::Read(
      dir_, 1,
      [&](uint64_t lsn, uint8_t, absl::string_view) {
        EXPECT_EQ(lsn, expected++);
        return absl::OkStatus();
      },
      &summary);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(summary.records, 14u);
  EXPECT_FALSE(summary.torn_tail);
}

TEST_F(TinyTmpfsTest, OpenOnAFullDiskIsResourceExhausted) {
  MOUNT_OR_SKIP("size=2m");
  Fill(File("filler"));
  absl::StatusOr<std::unique_ptr<Journal>> opened = Journal::Open(Options(dir_), 1);
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(opened.status().message(), HasSubstr("data directory full"));
  EXPECT_THAT(ListDir(dir_), ElementsAre("filler"));  // no partial segment left
}

TEST_F(TinyTmpfsTest, SnapshotThatDoesNotFitKeepsThePreviousOne) {
  MOUNT_OR_SKIP("size=2m");
  const std::string path = File("snapshot");
  {
    auto writer = RecordFileWriter::Create(path);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append(1, 0, "previous").ok());
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  Fill(File("filler"));
  auto writer = RecordFileWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  absl::Status status;
  for (int i = 0; i < 3 && status.ok(); ++i) {
    status = (*writer)->Append(1, i, std::string(1 << 20, 's'));
  }
  if (status.ok()) status = (*writer)->Commit();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr(path + ".tmp"));
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_EQ((*writer)->Commit(), status);  // sticky
  FileReadResult read = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
  ASSERT_TRUE(read.status.ok()) << read.status;
  ASSERT_EQ(read.records.size(), 1u);
  EXPECT_EQ(read.records[0].payload, "previous");
}

TEST_F(TinyTmpfsTest, ReadOnlyDirectoryIsFailedPrecondition) {
  MOUNT_OR_SKIP("size=2m");
  ASSERT_EQ(mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, "size=2m"), 0)
      << std::strerror(errno);
  absl::StatusOr<std::unique_ptr<Journal>> opened = Journal::Open(Options(dir_), 1);
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(opened.status().message(), HasSubstr(dir_));
  EXPECT_THAT(opened.status().message(), HasSubstr("Read-only file system"));
  absl::StatusOr<std::unique_ptr<RecordFileWriter>> writer =
      RecordFileWriter::Create(File("snapshot"));
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(writer.status().message(), HasSubstr("Read-only file system"));
}

}  // namespace
}  // namespace fisherd
