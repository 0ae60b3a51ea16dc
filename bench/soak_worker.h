// fisherd-soak: one of the N concurrent workers and the random mix of operations it runs.
//
// A worker keeps one ScoreStreamer open on its home session (a checked one) across
// iterations, so N workers hold N streams open at all times, and between its appends it
// runs, at random: unary AddScores, steps (unary and streamed), FVPs, GetFisher,
// GetSession/ListSessions, and the injected faults: a raw score stream cancelled
// mid-way (TryCancel), calls with tiny deadlines, its own streamer abandoned with
// batches in flight (the destructor cancels), a child process that streams and is
// SIGKILLed (a client that disappears without closing anything), and churn sessions
// created, fed, stepped and deleted, sometimes under an open stream.
// Every batch sent to a checked session goes into the Ledger.
#ifndef FISHERD_BENCH_SOAK_WORKER_H_
#define FISHERD_BENCH_SOAK_WORKER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/soak_ledger.h"
#include "bench/soak_report.h"
#include "bench/soak_rows.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"

namespace fisherd::soak {

struct SoakEnv {
  std::vector<client::FisherClient*> clients;  // shared channels, worker i uses i % size
  std::string address;                         // fisherd's HOST:PORT (for child processes)
  std::vector<SessionSpec> checked;
  Ledger* ledger = nullptr;
  OpCounts* counts = nullptr;
  std::atomic<bool>* stop = nullptr;
  std::atomic<int>* children = nullptr;  // child processes alive
  int max_children = 2;
  std::string self_exe;  // empty: no child processes
  int think_ms = 10;
  // Weights of the mix's operations by name (see Worker::MixNames); missing: the default.
  std::map<std::string, int> mix;
};

class Worker {
 public:
  Worker(int index, const SoakEnv& env, uint64_t seed);
  ~Worker();

  // The random mix until env.stop.
  void RunMixed();
  // The names --mix accepts, with their default weights.
  static std::map<std::string, int> DefaultMix();
  // Closes the streamer (every batch acknowledged) and records its acks.
  void Finish();
  // The drain phase: only score batches on the home session, until the server goes away
  // (the streamer gives up) or env.stop.
  void RunStreamOnly();
  // After the drain: records the streamer's acks and drops it (the server is gone).
  void Abandon();

 private:
  client::FisherClient* client() const { return client_; }
  const SessionSpec& RandomChecked();
  bool Chance(double p);
  int Uniform(int lo, int hi);  // inclusive
  std::vector<double> RandomVector(uint64_t n);

  absl::Status EnsureStreamer(int max_retries);
  void RecordStreamerAcks();
  void DropStreamer();
  // Appends `batches` batches to the home streamer; false when it failed.
  bool AppendBatches(int batches, const std::string& op, bool draining);

  void OpStream();
  void OpAddScores();
  void OpStep();
  void OpFvp();
  void OpGetFisher();
  void OpInspect();
  void FaultCancelStream();
  void FaultDeadline();
  void FaultAbandonStreamer();
  void FaultKilledChild();
  void Churn();

  const int index_;
  const SoakEnv env_;
  client::FisherClient* const client_;
  std::mt19937_64 rng_;
  const SessionSpec home_;

  std::unique_ptr<client::ScoreStreamer> streamer_;
  std::string streamer_id_;
  int streamer_generation_ = 0;

  std::string unary_id_;
  int unary_generation_ = 0;
  uint64_t unary_sequence_ = 0;

  int serial_ = 0;  // numbers the one-shot worker ids and churn sessions
};

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_WORKER_H_
