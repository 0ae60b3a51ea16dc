// Child processes for end-to-end tests: the real fisherd binary on a loopback port,
// and one-shot commands such as fisherctl whose output and exit code are checked.
#ifndef FISHERD_TESTS_E2E_PROCESS_H_
#define FISHERD_TESTS_E2E_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace fisherd::testing {

struct CommandResult {
  int exit_code = -1;  // 128 + the signal's number when killed by one (as a shell says)
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv to completion. REQUIRES: argv non-empty.
CommandResult RunCommand(const std::vector<std::string>& argv);

// A fisherd started with --listen=127.0.0.1:0 plus extra flags; the constructor waits
// for "fisherd listening on HOST:PORT" (address() is empty if it never came). With
// --metrics-listen, fisherd prints "fisherd metrics on HOST:PORT" before that line.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& extra_flags = {});
  ~ServerProcess();  // SIGKILL if still running

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& address() const { return address_; }
  // The metrics listener's HOST:PORT; empty without --metrics-listen.
  const std::string& metrics_address() const { return metrics_address_; }
  // Sends SIGTERM and returns the exit code: 128 + the signal's number if a signal
  // killed it, -1 if it was still running after timeout_seconds (then SIGKILL).
  int Terminate(int timeout_seconds = 30);
  // Waits for it to exit by itself; the exit code as Terminate says.
  int WaitForExit(int timeout_seconds = 30);
  // The process id, -1 once it has been reaped.
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string address_;
  std::string metrics_address_;
};

// Paths of the binaries under test, given to the test by CMake.
std::string FisherdPath();
std::string FisherctlPath();

}  // namespace fisherd::testing

#endif  // FISHERD_TESTS_E2E_PROCESS_H_
