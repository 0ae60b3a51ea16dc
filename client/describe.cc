#include "client/describe.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fisherd::client {
namespace v1 = ::fisherd::v1;

const char* RepresentationName(v1::Representation representation) {
  return representation == v1::REPRESENTATION_DIAGONAL ? "DIAGONAL" : "DENSE";
}

std::string DescribeSession(const v1::Session& session) {
  const v1::SessionConfig& c = session.config();
  const v1::SessionStats& s = session.stats();
  // decay 0 is the proto default and means "keep everything" (rho = 1).
  const double decay = c.decay() == 0 ? 1.0 : c.decay();
  std::string out = absl::StrFormat(
      "name:           %s\n"
      "dim:            %d\n"
      "representation: %s\n"
      "centered:       %s\n"
      "decay:          %g\n"
      "damping:        %g\n"
      "sample_count:   %d\n"
      "weight_sum:     %g\n"
      "step_count:     %d\n",
      session.name(), c.dim(), RepresentationName(c.representation()),
      c.centered() ? "true" : "false", decay, c.damping(), s.sample_count(), s.weight_sum(),
      s.step_count());
  if (s.worker_sequences().empty()) {
    absl::StrAppend(&out, "workers:        none\n");
  } else {
    // The protobuf map has no order; print sorted so the output is stable.
    std::map<std::string, uint64_t> sorted(s.worker_sequences().begin(),
                                           s.worker_sequences().end());
    absl::StrAppend(&out, "workers:        (last applied sequence)\n");
    for (const auto& [worker, sequence] : sorted) {
      absl::StrAppendFormat(&out, "  %-20s %d\n", worker, sequence);
    }
  }
  return out;
}

std::string DescribeSessionBrief(const v1::Session& session) {
  return absl::StrFormat("%-32s dim=%-6d %-8s samples=%-10d steps=%d", session.name(),
                         session.config().dim(),
                         RepresentationName(session.config().representation()),
                         session.stats().sample_count(), session.stats().step_count());
}

std::string DescribeFisherSummary(const v1::FisherSummary& summary) {
  std::string out = absl::StrFormat(
      "dim:            %d\n"
      "representation: %s\n"
      "centered:       %s\n"
      "sample_count:   %d\n"
      "weight_sum:     %g\n"
      "trace:          %.10g\n"
      "frobenius_norm: %.10g\n",
      summary.dim(), RepresentationName(summary.representation()),
      summary.centered() ? "true" : "false", summary.sample_count(), summary.weight_sum(),
      summary.trace(), summary.frobenius_norm());
  if (summary.has_eigenvalues()) {
    absl::StrAppendFormat(&out,
                          "min_eigenvalue: %.10g\n"
                          "max_eigenvalue: %.10g\n"
                          "condition:      %.6g\n",
                          summary.min_eigenvalue(), summary.max_eigenvalue(),
                          summary.condition_number());
  }
  return out;
}

}  // namespace fisherd::client
