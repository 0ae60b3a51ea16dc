// Helpers shared by the storage tests: scratch directories, whole-file I/O, reading
// every record of a file, and running this test binary as a child process that a
// fault point may kill.
#ifndef FISHERD_TESTS_STORAGE_TEST_UTIL_H_
#define FISHERD_TESTS_STORAGE_TEST_UTIL_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "storage/record_format.h"

namespace fisherd {
namespace testing_storage {

// A fresh directory under the test temp dir, removed (recursively) on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& contents);
std::string ReadFile(const std::string& path);
bool FileExists(const std::string& path);
uint64_t FileSize(const std::string& path);
// Names of the entries of dir, sorted.
std::vector<std::string> ListDir(const std::string& dir);

struct ReadRecord {
  uint8_t type = 0;
  uint64_t sequence = 0;
  std::string payload;
  uint64_t offset = 0;
};

// Every record of the file until the end of data or the first error.
struct FileReadResult {
  std::vector<ReadRecord> records;
  absl::Status status;  // the error, or OK at the end of data
  bool torn_tail = false;
  uint64_t valid_end = 0;
};
FileReadResult ReadAllRecords(const std::string& path, TailPolicy policy);

// The result of RunChild.
struct ChildResult {
  bool killed_by_sigkill = false;
  bool exited_ok = false;  // exit status 0
  int raw_status = 0;
  std::string reported;  // what the child wrote to its report pipe
  std::string stderr_text;
};

// Re-executes this test binary running only `gtest_filter`, with the extra environment
// variables (NAME=value) set and kReportFdVariable naming a pipe the child may write
// to. Returns once the child is gone.
ChildResult RunChild(const std::string& gtest_filter, const std::vector<std::string>& environment);

// The environment variable through which a child finds its report pipe.
inline constexpr char kReportFdVariable[] = "FISHERD_TEST_REPORT_FD";
// Writes one line to the report pipe (atomic for lines under PIPE_BUF).
void ReportLine(const std::string& line);

}  // namespace testing_storage
}  // namespace fisherd

#endif  // FISHERD_TESTS_STORAGE_TEST_UTIL_H_
