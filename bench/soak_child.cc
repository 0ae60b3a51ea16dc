#include "bench/soak_child.h"

#include <iostream>

#include "absl/time/clock.h"
#include "bench/soak_rows.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"

namespace fisherd::soak {

int RunChildStream(const std::string& address, const std::string& session_id,
                   const std::string& worker_id, double max_seconds) {
  const SessionSpec* spec = nullptr;
  const std::vector<SessionSpec> sessions = CheckedSessions();
  for (const SessionSpec& s : sessions) {
    if (s.id == session_id && s.kind != SessionKind::kLayered) spec = &s;
  }
  if (spec == nullptr) {
    std::cerr << "fisherd-soak child: no plain checked session " << session_id << "\n";
    return 1;
  }
  client::ClientOptions options;
  options.target = address;
  absl::StatusOr<std::unique_ptr<client::FisherClient>> client =
      client::FisherClient::Create(options);
  if (!client.ok()) return 1;
  client::ScoreStreamerOptions so;
  so.session = session_id;
  so.worker_id = worker_id;
  so.dim = spec->dim;
  so.starting_sequence = 1;
  so.rows_per_batch = kRowsPerBatch;
  so.max_in_flight = 8;
  so.max_retries = 2;
  absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> streamer =
      client::ScoreStreamer::Create(client->get(), so);
  if (!streamer.ok()) return 1;
  const absl::Time until = absl::Now() + absl::Seconds(max_seconds);
  for (int i = 0; i < 1000000 && absl::Now() < until; ++i) {
    const uint64_t sequence = (*streamer)->stats().next_sequence;
    const Rows rows = MakeRows(worker_id, sequence, spec->dim);
    if (absl::Status s = (*streamer)->Append(rows.scores, rows.weights); !s.ok()) {
      std::cerr << "fisherd-soak child: " << s << "\n";
      return 1;
    }
  }
  return (*streamer)->Close().ok() ? 0 : 1;
}

}  // namespace fisherd::soak
