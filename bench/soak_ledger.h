// fisherd-soak: the client's record of what it sent and what the server acknowledged,
// and the exactly-once check against the server's statistics.
//
// Each worker id is used by one sender only (a streamer, a unary sender, a cancelled
// stream, a killed child): when a sender is abandoned, its successor takes a new id.
// One sender's batches carry sequences 1, 2, 3, ... and the server applies them in
// order, so the server's highest applied sequence for the id (worker_sequences) says
// exactly which batches it holds: 1..that. The check then asks
//   - acknowledged <= applied <= sent for every id (nothing acknowledged was lost and
//     nothing was applied that was never sent), and no id the soak never used;
//   - the sample counts, W and traces of every target equal the oracle's float64 sums
//     over the applied batches (a batch applied twice, or one skipped inside the
//     prefix, changes them).
#ifndef FISHERD_BENCH_SOAK_LEDGER_H_
#define FISHERD_BENCH_SOAK_LEDGER_H_

#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bench/soak_rows.h"
#include "client/fisher_client.h"

namespace fisherd::soak {

inline constexpr uint64_t kUnknownSent = std::numeric_limits<uint64_t>::max();

class Ledger {
 public:
  // `sequence` was (or may have been) written for the id; kUnknownSent: a child process
  // that sent an unknown number of batches.
  void Sent(const std::string& session_id, const std::string& worker_id, uint64_t sequence);
  // The server acknowledged every batch of the id up to `sequence`.
  void Acked(const std::string& session_id, const std::string& worker_id, uint64_t sequence);

  struct Verdict {
    bool ok = true;
    uint64_t worker_ids = 0;       // ids checked
    uint64_t acked_batches = 0;    // acknowledged to the client
    uint64_t applied_batches = 0;  // applied per the server
    uint64_t unacked_applied = 0;  // applied although the client saw no ack (lost acks)
    // ... by sender kind, the letter after "w<N>-" in the worker id: s streamer (abandoned
    // or cut), u unary AddScores, c cancelled stream, d deadline AddScores, e stream run
    // into its deadline, k killed child (which reports no acks at all).
    std::map<char, uint64_t> unacked_applied_by_kind;
    uint64_t rows = 0;                  // rows the oracle expects in all checked sessions
    std::vector<std::string> problems;  // the first few violations, described
  };
  // Compares the record with the server's sessions (GetSession, GetFisher per target).
  // Call with no sender active.
  Verdict Check(client::FisherClient* client, const std::vector<SessionSpec>& sessions) const;

 private:
  struct Entry {
    uint64_t sent = 0;
    uint64_t acked = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, Entry>> entries_;  // session -> worker -> entry
};

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_LEDGER_H_
