// fisherd-soak: the fisherd under test as a child process, and what /proc says about it.
//
// FisherdProcess starts the real binary with --listen=127.0.0.1:0, learns its port from
// the "fisherd listening on HOST:PORT" line and keeps draining its output (so that it
// never blocks on a full pipe), remembering the last lines for the report.
#ifndef FISHERD_BENCH_SOAK_PROCESS_H_
#define FISHERD_BENCH_SOAK_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fisherd::soak {

class FisherdProcess {
 public:
  // Starts `binary --listen=127.0.0.1:0 flags...` and waits up to 30 s for its port.
  // ok() is false when it never announced one (output() says why).
  FisherdProcess(const std::string& binary, const std::vector<std::string>& flags);
  ~FisherdProcess();  // SIGKILL if still running

  FisherdProcess(const FisherdProcess&) = delete;
  FisherdProcess& operator=(const FisherdProcess&) = delete;

  bool ok() const { return !address_.empty(); }
  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }

  struct Exit {
    bool exited = false;   // false: still running after the timeout (then SIGKILLed)
    int code = -1;         // exit code, -1 when ended by a signal
    int signal = 0;        // the signal that ended it, if any
    double seconds = 0.0;  // from the SIGTERM to the exit
  };
  // SIGTERM, then waits up to timeout_seconds; SIGKILL after that.
  Exit Terminate(double timeout_seconds);

  // The server's stdout and stderr so far (the last 64 KiB).
  std::string output() const;

 private:
  void Drain(int fd);

  pid_t pid_ = -1;
  std::string address_;
  std::thread reader_;
  mutable std::mutex mu_;
  std::string output_;
};

// A field of /proc/PID/status in KiB, VmRSS by default (RssAnon: its anonymous part,
// without the binary's and libraries' pages faulted in) (0 if unreadable).
uint64_t ResidentKiB(pid_t pid, const std::string& field = "VmRSS");
// Entries of /proc/PID/fd (-1 if unreadable).
int OpenFds(pid_t pid);

// Path of the running executable (for spawning the soak's own child mode).
std::string SelfExecutable();

// Starts `argv` with stdin/stdout/stderr on /dev/null; returns its pid or -1.
pid_t SpawnQuiet(const std::vector<std::string>& argv);

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_PROCESS_H_
