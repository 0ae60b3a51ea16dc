// RecordFileWriter (atomic snapshot-style files) and the small file helpers.
#include "storage/file_util.h"

#include <sys/stat.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/record_format.h"
#include "tests/storage/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing_storage::FileExists;
using ::fisherd::testing_storage::FileReadResult;
using ::fisherd::testing_storage::ReadAllRecords;
using ::fisherd::testing_storage::ScratchDir;
using ::fisherd::testing_storage::WriteFile;
using ::testing::HasSubstr;

TEST(FileUtilTest, IoErrorStatusMapsErrnoToCodesAndNamesThePath) {
  absl::Status full = IoErrorStatus("write", "/data/x", ENOSPC);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "write /data/x: No space left on device");
  EXPECT_EQ(IoErrorStatus("w", "p", EDQUOT).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(IoErrorStatus("w", "p", EROFS).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(IoErrorStatus("w", "p", EACCES).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(IoErrorStatus("w", "p", EIO).code(), absl::StatusCode::kInternal);
}

TEST(FileUtilTest, DirectoryOf) {
  EXPECT_EQ(DirectoryOf("/a/b/c"), "/a/b");
  EXPECT_EQ(DirectoryOf("/c"), "/");
  EXPECT_EQ(DirectoryOf("c"), ".");
}

TEST(FileUtilDeathTest, FatalIoErrorNamesOperationPathAndError) {
  EXPECT_DEATH(FatalIoError("fdatasync", "/data/seg.wal", EIO),
               "fatal: fdatasync /data/seg.wal: Input/output error");
}

TEST(RecordFileWriterTest, CommitReplacesTheFileAtomically) {
  ScratchDir dir;
  const std::string path = dir.File("snapshot");
  WriteFile(path, "old contents");
  auto writer = RecordFileWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->temp_path(), path + ".tmp");
  std::vector<std::string> payloads = {"", "header", std::string(5 << 20, 'x'),
                                       std::string(3 << 20, 'y'), "tail"};
  uint64_t expected_bytes = 0;
  for (size_t i = 0; i < payloads.size(); ++i) {
    ASSERT_TRUE((*writer)->Append(9, i, payloads[i]).ok());
    expected_bytes += EncodedRecordSize(payloads[i].size());
    // Until Commit the old file is untouched.
    EXPECT_EQ(testing_storage::ReadFile(path), "old contents");
  }
  EXPECT_EQ((*writer)->bytes(), expected_bytes);
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_EQ(testing_storage::FileSize(path), expected_bytes);
  FileReadResult read = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
  ASSERT_TRUE(read.status.ok()) << read.status;
  ASSERT_EQ(read.records.size(), payloads.size());
  for (size_t i = 0; i < payloads.size(); ++i) {
    EXPECT_EQ(read.records[i].sequence, i);
    EXPECT_EQ(read.records[i].payload, payloads[i]);
  }
  EXPECT_EQ((*writer)->Append(9, 99, "late").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*writer)->Commit().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RecordFileWriterTest, AbandonedWriterRemovesItsTempFile) {
  ScratchDir dir;
  const std::string path = dir.File("snapshot");
  WriteFile(path, "old");
  {
    auto writer = RecordFileWriter::Create(path);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append(1, 0, std::string(6 << 20, 'z')).ok());
    EXPECT_TRUE(FileExists(path + ".tmp"));
  }
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_EQ(testing_storage::ReadFile(path), "old");
}

TEST(RecordFileWriterTest, RejectsInvalidRecords) {
  ScratchDir dir;
  auto writer = RecordFileWriter::Create(dir.File("s"));
  ASSERT_TRUE(writer.ok());
  EXPECT_EQ((*writer)->Append(0, 0, "x").code(), absl::StatusCode::kInvalidArgument);
}

TEST(RecordFileWriterTest, UnwritableDirectoryIsAStatusNamingThePath) {
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<RecordFileWriter>> writer =
      RecordFileWriter::Create(dir.File("missing/snapshot"));
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(writer.status().message(), HasSubstr(dir.File("missing/snapshot.tmp")));
  EXPECT_THAT(writer.status().message(), HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace fisherd
