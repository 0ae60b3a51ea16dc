#include "tests/storage/test_util.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "gtest/gtest.h"

extern char** environ;

namespace fisherd {
namespace testing_storage {

ScratchDir::ScratchDir() {
  std::string pattern = ::testing::TempDir() + "fisherd_storage_XXXXXX";
  char* made = mkdtemp(pattern.data());
  if (made == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << ": " << std::strerror(errno);
  }
  path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << "writing " << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

bool FileExists(const std::string& path) { return std::filesystem::exists(path); }

uint64_t FileSize(const std::string& path) { return std::filesystem::file_size(path); }

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

FileReadResult ReadAllRecords(const std::string& path, TailPolicy policy) {
  FileReadResult result;
  absl::StatusOr<std::unique_ptr<RecordFileReader>> reader = RecordFileReader::Open(path, policy);
  if (!reader.ok()) {
    result.status = reader.status();
    return result;
  }
  Record record;
  for (;;) {
    absl::StatusOr<bool> more = (*reader)->Next(&record);
    if (!more.ok()) {
      result.status = more.status();
      return result;
    }
    if (!*more) break;
    result.records.push_back(
        {record.type, record.sequence, std::string(record.payload), record.offset});
  }
  result.torn_tail = (*reader)->torn_tail();
  result.valid_end = (*reader)->valid_end();
  return result;
}

namespace {

// Reads both pipes until both are closed.
void Drain(int report_fd, int stderr_fd, std::string* report, std::string* err) {
  struct pollfd fds[2] = {{report_fd, POLLIN, 0}, {stderr_fd, POLLIN, 0}};
  std::string* sinks[2] = {report, err};
  int open_fds = 2;
  char buffer[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      ADD_FAILURE() << "poll: " << std::strerror(errno);
      return;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t got = read(fds[i].fd, buffer, sizeof(buffer));
      if (got > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
}

}  // namespace

ChildResult RunChild(const std::string& gtest_filter, const std::vector<std::string>& environment) {
  ChildResult result;
  int report[2];
  int err[2];
  if (pipe2(report, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return result;
  }
  // Everything the child needs is prepared before fork: after it, only exec.
  std::vector<std::string> env_strings;
  for (char** variable = environ; *variable != nullptr; ++variable) {
    std::string entry = *variable;
    if (entry.rfind("FISHERD_FAULT=", 0) == 0) continue;  // only what we pass
    env_strings.push_back(entry);
  }
  for (const std::string& entry : environment) env_strings.push_back(entry);
  const int child_report_fd = 3;
  env_strings.push_back(std::string(kReportFdVariable) + "=" + std::to_string(child_report_fd));
  std::vector<char*> envp;
  for (std::string& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=" + gtest_filter;
  std::vector<char*> argv = {exe.data(), filter.data(), nullptr};

  pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return result;
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    dup2(report[1], child_report_fd);  // dup2 clears O_CLOEXEC on the copy
    execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(report[1]);
  close(err[1]);
  Drain(report[0], err[0], &result.reported, &result.stderr_text);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.raw_status = status;
  result.killed_by_sigkill = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  result.exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return result;
}

void ReportLine(const std::string& line) {
  const char* fd_text = std::getenv(kReportFdVariable);
  if (fd_text == nullptr) return;
  std::string text = line + "\n";
  ssize_t ignored = write(std::atoi(fd_text), text.data(), text.size());
  (void)ignored;
}

}  // namespace testing_storage
}  // namespace fisherd
