// fisherd-soak: counts of operations and of their outcomes, by operation and status code.
//
// Each operation names the codes its injected fault may legitimately produce (a
// cancelled stream's CANCELLED, a tiny deadline's DEADLINE_EXCEEDED, a deleted churn
// session's NOT_FOUND); those are counted as expected, every other failure as unexpected.
#ifndef FISHERD_BENCH_SOAK_REPORT_H_
#define FISHERD_BENCH_SOAK_REPORT_H_

#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace fisherd::soak {

class OpCounts {
 public:
  // One operation `op` ended with `status`; `expected` lists the failure codes the
  // operation's fault injection allows.
  void Record(const std::string& op, const absl::Status& status,
              std::initializer_list<absl::StatusCode> expected = {});
  // A failure that is not an RPC status (e.g. the soak's own bookkeeping, a child that
  // exited by itself): always unexpected.
  void Unexpected(const std::string& op, const std::string& what);

  uint64_t unexpected() const;
  // Multi-line text: operations, then expected and unexpected failures by op x code,
  // with up to a few example messages of unexpected ones.
  std::string Text() const;
  // {"ops":{...},"expected_errors":{"op/CODE":n},"unexpected_errors":{...}}
  std::string Json() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> ops_;
  std::map<std::string, uint64_t> expected_;    // "op/CODE"
  std::map<std::string, uint64_t> unexpected_;  // "op/CODE"
  std::vector<std::string> examples_;
};

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_REPORT_H_
