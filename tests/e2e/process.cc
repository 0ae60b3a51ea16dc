#include "tests/e2e/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

namespace fisherd::testing {
namespace {

// fork + exec with stdout and stderr on a pipe; returns the read end.
pid_t Spawn(const std::vector<std::string>& argv, int* read_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  *read_fd = fds[0];
  return pid;
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

}  // namespace

std::string FisherdPath() { return FISHERD_BIN; }
std::string FisherctlPath() { return FISHERCTL_BIN; }

CommandResult RunCommand(const std::vector<std::string>& argv) {
  CommandResult result;
  int fd = -1;
  const pid_t pid = Spawn(argv, &fd);
  if (pid < 0) return result;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0) result.output.append(buffer, n);
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = ExitCode(status);
  return result;
}

ServerProcess::ServerProcess(const std::vector<std::string>& extra_flags) {
  std::vector<std::string> argv = {FisherdPath(), "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  pid_ = Spawn(argv, &stdout_fd_);
  if (pid_ < 0) return;
  std::string seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const std::string marker = "fisherd listening on ";
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{stdout_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char buffer[1024];
    const ssize_t n = read(stdout_fd_, buffer, sizeof buffer);
    if (n <= 0) break;
    seen.append(buffer, n);
    const size_t at = seen.find(marker);
    const size_t end = at == std::string::npos ? at : seen.find('\n', at);
    if (end != std::string::npos) {
      address_ = seen.substr(at + marker.size(), end - at - marker.size());
      const std::string metrics_marker = "fisherd metrics on ";
      const size_t metrics_at = seen.rfind(metrics_marker, at);
      if (metrics_at != std::string::npos) {
        const size_t metrics_end = seen.find('\n', metrics_at);
        const size_t begin = metrics_at + metrics_marker.size();
        metrics_address_ = seen.substr(begin, metrics_end - begin);
      }
      break;
    }
  }
  // Keep draining the server's output so that it never blocks on a full pipe.
  const int fd = stdout_fd_;
  stdout_fd_ = -1;
  std::thread([fd] {
    char buffer[4096];
    while (read(fd, buffer, sizeof buffer) > 0) {
    }
    close(fd);
  }).detach();
}

int ServerProcess::Terminate(int timeout_seconds) {
  if (pid_ < 0) return -1;
  kill(pid_, SIGTERM);
  return WaitForExit(timeout_seconds);
}

int ServerProcess::WaitForExit(int timeout_seconds) {
  if (pid_ < 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ExitCode(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
}

}  // namespace fisherd::testing
