#include "bench/soak_report.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fisherd::soak {
namespace {

constexpr size_t kMaxExamples = 10;

std::string JsonMap(const std::map<std::string, uint64_t>& m) {
  std::string out = "{";
  for (const auto& [key, count] : m) {
    if (out.size() > 1) out += ",";
    absl::StrAppendFormat(&out, "\"%s\":%d", key, count);
  }
  return out + "}";
}

std::string TextMap(const std::string& title, const std::map<std::string, uint64_t>& m) {
  std::string out = title + (m.empty() ? " none\n" : "\n");
  for (const auto& [key, count] : m) absl::StrAppendFormat(&out, "  %-40s %10d\n", key, count);
  return out;
}

}  // namespace

void OpCounts::Record(const std::string& op, const absl::Status& status,
                      std::initializer_list<absl::StatusCode> expected) {
  std::lock_guard<std::mutex> lock(mu_);
  ++ops_[op];
  if (status.ok()) return;
  const std::string key = absl::StrCat(op, "/", absl::StatusCodeToString(status.code()));
  if (std::find(expected.begin(), expected.end(), status.code()) != expected.end()) {
    ++expected_[key];
    return;
  }
  ++unexpected_[key];
  if (examples_.size() < kMaxExamples)
    examples_.push_back(absl::StrCat(key, ": ", status.message()));
}

void OpCounts::Unexpected(const std::string& op, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++ops_[op];
  ++unexpected_[op + "/SOAK"];
  if (examples_.size() < kMaxExamples) examples_.push_back(absl::StrCat(op, ": ", what));
}

uint64_t OpCounts::unexpected() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& [key, count] : unexpected_) n += count;
  return n;
}

std::string OpCounts::Text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = TextMap("operations:", ops_);
  out += TextMap("expected failures (injected faults):", expected_);
  out += TextMap("unexpected failures:", unexpected_);
  for (const std::string& e : examples_) out += "  e.g. " + e + "\n";
  return out;
}

std::string OpCounts::Json() const {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrCat("{\"ops\":", JsonMap(ops_), ",\"expected_errors\":", JsonMap(expected_),
                      ",\"unexpected_errors\":", JsonMap(unexpected_), "}");
}

}  // namespace fisherd::soak
