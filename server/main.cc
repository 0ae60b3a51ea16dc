// fisherd: the natural-gradient service. Parses flags, starts the server, prints the
// bound address, and drains on SIGTERM/SIGINT.
//
// Signals: SIGTERM and SIGINT only post a semaphore that the main thread waits on; the
// drain runs on the main thread, never in a handler. Blocking them and calling sigwait
// was not enough: OpenBLAS starts its worker threads while the library loads, before
// main, with the signals unblocked, so a SIGTERM that came while the main thread was not
// yet in sigwait (starting up, or printing the lines below) went to such a thread and its
// default action killed fisherd without a drain. A handler is process-wide and catches
// the signal on whichever thread takes it. The threads fisherd starts (gRPC's, the
// pool's) still inherit the signals blocked, so their system calls are not interrupted.
#include <malloc.h>
#include <semaphore.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <iostream>

#include "absl/time/time.h"
#include "server/fisher_server.h"
#include "server/flags.h"

namespace {

sem_t stop_requested;
std::atomic<int> stop_signal{0};

// Async-signal-safe only: an atomic store and sem_post (errno kept for the interrupted
// thread). A second signal during the drain posts again and changes nothing.
extern "C" void OnStopSignal(int signal_number) {
  const int saved_errno = errno;
  stop_signal.store(signal_number, std::memory_order_relaxed);
  sem_post(&stop_requested);
  errno = saved_errno;
}

// Installs OnStopSignal for SIGTERM and SIGINT and blocks both in the calling thread,
// so that the threads it starts inherit them blocked. Returns the blocked set.
sigset_t CatchStopSignals() {
  sem_init(&stop_requested, /*pshared=*/0, /*value=*/0);
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return stop_signals;
}

// Unblocks the stop signals in the main thread (one that came while they were blocked
// everywhere is delivered now) and waits until one has been caught; returns it.
int WaitForStopSignal(const sigset_t& stop_signals) {
  pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
  while (sem_wait(&stop_requested) != 0 && errno == EINTR) {
  }
  return stop_signal.load(std::memory_order_relaxed);
}

}  // namespace

int main(int argc, char** argv) {
  // One malloc arena for every thread. Batches are allocated on gRPC threads and freed
  // on pool threads (and the other way round); with glibc's default of an arena per
  // thread each arena kept its own high-water mark of multi-MiB batch buffers, and a
  // dense dim-4096 session measured 1.45-1.50x of its 8 dim^2 bytes resident, against
  // 1.18x with one arena and no measurable change in ingest speed (docs/performance.md).
  // Must run before any thread starts.
  mallopt(M_ARENA_MAX, 1);

  const sigset_t stop_signals = CatchStopSignals();
  // A metrics scraper that hangs up mid-answer must not kill the server: writes to its
  // socket then fail with EPIPE instead (gRPC's own sockets never raise SIGPIPE).
  signal(SIGPIPE, SIG_IGN);

  fisherd::server::ServerFlags flags;
  fisherd::server::FlagSet flag_set(
      "fisherd",
      "Serves fisherd.v1.FisherService (natural-gradient steps from streamed score vectors) "
      "over gRPC.");
  fisherd::server::DefineServerFlags(&flags, &flag_set);
  bool help = false;
  const absl::Status parsed = flag_set.Parse(argc, argv, &help);
  if (help) {
    std::cout << flag_set.Help();
    return 0;
  }
  if (!parsed.ok()) {
    std::cerr << "fisherd: " << parsed.message() << "\n(run fisherd --help for the flags)\n";
    return 2;
  }

  absl::StatusOr<std::unique_ptr<fisherd::server::FisherServer>> server =
      fisherd::server::FisherServer::Start(flags.ToServerOptions());
  if (!server.ok()) {
    std::cerr << "fisherd: " << server.status().message() << "\n";
    return 1;
  }
  // Printed before the listening line, so that whoever waits for that line has this one.
  if (!(*server)->metrics_address().empty()) {
    std::cout << "fisherd metrics on " << (*server)->metrics_address() << std::endl;
  }
  // Tests and scripts parse this line to learn the port when --listen asked for port 0.
  std::cout << "fisherd listening on " << (*server)->address() << std::endl;
  std::cerr << "fisherd: transport "
            << (flags.tls_cert.empty()        ? "plaintext"
                : flags.tls_client_ca.empty() ? "TLS"
                                              : "mutual TLS")
            << (flags.auth_token_file.empty() ? ", no token required"
                                              : ", bearer token required (health excepted)")
            << std::endl;
  if ((*server)->store() != nullptr) {
    std::cerr << "fisherd: durable sessions in " << flags.data_dir << ": "
              << (*server)->recovery().Describe() << std::endl;
  } else {
    std::cerr << "fisherd: sessions in memory only (no --data-dir): a restart loses them"
              << std::endl;
  }
  if ((*server)->health_port() != 0) {
    std::cerr << "fisherd: health only, plaintext, on port " << (*server)->health_port()
              << std::endl;
  }

  const int signal_number = WaitForStopSignal(stop_signals);
  std::cerr << "fisherd: " << strsignal(signal_number) << "; draining for up to "
            << flags.drain_seconds << " s" << std::endl;
  (*server)->Shutdown(absl::Seconds(flags.drain_seconds));
  std::cerr << "fisherd: stopped" << std::endl;
  return 0;
}
