#include "bench/soak_ledger.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace fisherd::soak {
namespace v1 = ::fisherd::v1;
namespace {

constexpr size_t kMaxProblems = 20;

void Problem(Ledger::Verdict* v, std::string text) {
  v->ok = false;
  if (v->problems.size() < kMaxProblems) v->problems.push_back(std::move(text));
}

bool Close(double a, double b, double rel) {
  return std::fabs(a - b) <= rel * std::max({1.0, std::fabs(a), std::fabs(b)});
}

}  // namespace

void Ledger::Sent(const std::string& session_id, const std::string& worker_id, uint64_t sequence) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[session_id][worker_id];
  e.sent = std::max(e.sent, sequence);
}

void Ledger::Acked(const std::string& session_id, const std::string& worker_id, uint64_t sequence) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[session_id][worker_id];
  e.acked = std::max(e.acked, sequence);
}

Ledger::Verdict Ledger::Check(client::FisherClient* client,
                              const std::vector<SessionSpec>& sessions) const {
  Verdict v;
  std::lock_guard<std::mutex> lock(mu_);
  for (const SessionSpec& spec : sessions) {
    absl::StatusOr<v1::Session> session = client->GetSession(spec.id);
    if (!session.ok()) {
      Problem(&v, absl::StrFormat("%s: GetSession: %s", spec.id, session.status().ToString()));
      continue;
    }
    const auto& applied = session->stats().worker_sequences();
    static const std::map<std::string, Entry> kNone;
    auto found = entries_.find(spec.id);
    const std::map<std::string, Entry>& ids = found == entries_.end() ? kNone : found->second;
    for (const auto& [worker, sequence] : applied) {
      if (ids.count(worker) == 0) {
        Problem(&v, absl::StrFormat("%s: the server applied sequence %d for worker %s, which "
                                    "the soak never used",
                                    spec.id, sequence, worker));
      }
    }
    std::vector<Sums> expected(TargetCount(spec));
    for (const auto& [worker, entry] : ids) {
      ++v.worker_ids;
      auto it = applied.find(worker);
      const uint64_t server = it == applied.end() ? 0 : it->second;
      v.acked_batches += entry.acked;
      v.applied_batches += server;
      if (server > entry.acked) {
        v.unacked_applied += server - entry.acked;
        const size_t dash = worker.find('-');
        const char kind = dash + 1 < worker.size() ? worker[dash + 1] : '?';
        v.unacked_applied_by_kind[kind] += server - entry.acked;
      }
      if (server < entry.acked) {
        Problem(&v, absl::StrFormat("%s: worker %s: batches up to %d were acknowledged but the "
                                    "server holds only up to %d (acknowledged batches lost)",
                                    spec.id, worker, entry.acked, server));
      }
      if (server > entry.sent) {
        Problem(&v, absl::StrFormat("%s: worker %s: the server applied up to %d but only %d "
                                    "were sent",
                                    spec.id, worker, server, entry.sent));
      }
      for (uint64_t seq = 1; seq <= server && seq <= entry.sent; ++seq) {
        const Target t = TargetFor(spec, seq);
        expected[t.index].Add(MakeRows(worker, seq, t.width), t.width);
      }
    }
    // Session totals.
    uint64_t rows = 0;
    double weight = 0.0;
    for (const Sums& s : expected) {
      rows += s.rows;
      weight += s.weight;
    }
    v.rows += rows;
    const v1::SessionStats& stats = session->stats();
    if (stats.sample_count() != rows || stats.weight_sum() != weight) {
      Problem(&v, absl::StrFormat("%s: the server counts %d rows of weight %.17g, the oracle "
                                  "%d rows of weight %.17g",
                                  spec.id, stats.sample_count(), stats.weight_sum(), rows, weight));
    }
    // Per target: counts (layered blocks) and the trace of F.
    for (int index = 0; index < TargetCount(spec); ++index) {
      // The first sequence (>= 1) with this target names it.
      Target t;
      for (uint64_t seq = 1; seq <= 4; ++seq) {
        t = TargetFor(spec, seq);
        if (t.index == index) break;
      }
      const Sums& want = expected[index];
      if (spec.kind == SessionKind::kLayered) {
        for (const v1::BlockStats& block : stats.blocks()) {
          if (block.name() != t.block) continue;
          const bool g = t.factor == v1::FACTOR_OUTPUT_GRADIENTS;
          const uint64_t n = g ? block.output_gradient_sample_count() : block.sample_count();
          const double w = g ? block.output_gradient_weight_sum() : block.weight_sum();
          if (n != want.rows || w != want.weight) {
            Problem(&v, absl::StrFormat("%s block %s%s: the server counts %d rows of weight "
                                        "%.17g, the oracle %d of %.17g",
                                        spec.id, t.block, g ? " (G)" : "", n, w, want.rows,
                                        want.weight));
          }
        }
      }
      if (want.rows == 0) continue;
      client::FisherQuery query;
      query.block = t.block;
      query.factor = t.factor;
      absl::StatusOr<client::FisherEstimate> fisher = client->GetFisher(spec.id, query);
      if (!fisher.ok()) {
        Problem(&v, absl::StrFormat("%s %s: GetFisher: %s", spec.id, t.block,
                                    fisher.status().ToString()));
        continue;
      }
      // A Kronecker block's A uses a-bar = [a; 1] (bias): each row adds w to its trace.
      const bool bias_row = t.factor == v1::FACTOR_ACTIVATIONS;
      const double trace = (want.weighted_sq + (bias_row ? want.weight : 0.0)) / want.weight;
      if (!Close(fisher->summary.trace(), trace, 1e-12)) {
        Problem(&v, absl::StrFormat("%s %s%s: trace %.17g, the oracle %.17g", spec.id,
                                    t.block.empty() ? "F" : t.block,
                                    t.factor == v1::FACTOR_OUTPUT_GRADIENTS ? " (G)" : "",
                                    fisher->summary.trace(), trace));
      }
    }
  }
  return v;
}

}  // namespace fisherd::soak
