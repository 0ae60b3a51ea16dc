#include "metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace fisherd::metrics {
namespace {

// A broken name is a bug in the calling code, found on its first run; there is nothing
// to recover to.
void Require(bool condition, absl::string_view what, absl::string_view name) {
  if (condition) return;
  std::fprintf(stderr, "fisherd metrics: %.*s: \"%.*s\"\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(name.size()), name.data());
  std::abort();
}

bool ValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    const bool ok = absl::ascii_isalpha(c) || c == '_' || (allow_colon && c == ':') ||
                    (i > 0 && absl::ascii_isdigit(c));
    if (!ok) return false;
  }
  return true;
}

// Adds to an atomic double; std::atomic<double>::fetch_add is C++20.
void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta, std::memory_order_relaxed)) {
  }
}

}  // namespace

void Gauge::Add(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // NaN compares false with every bound and would land in the first bucket.
  const size_t bucket =
      std::isnan(value)
          ? bounds_.size()
          : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

HistogramValue Histogram::Read() const {
  HistogramValue value;
  value.bounds = bounds_;
  value.counts.resize(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    value.counts[i] = counts_[i].load(std::memory_order_relaxed);
  }
  value.sum = sum_.load(std::memory_order_relaxed);
  return value;
}

FamilySnapshot FamilyBase::Collect() const {
  FamilySnapshot snapshot;
  snapshot.name = name_;
  snapshot.help = help_;
  snapshot.type = type_;
  snapshot.label_names = label_names_;
  CollectSamples(&snapshot.samples);
  return snapshot;
}

void FamilyBase::CheckLabelCount(size_t values) const {
  Require(values == label_names_.size(), "wrong number of label values for", name_);
}

template <typename Metric>
Family<Metric>& Registry::Add(std::unique_ptr<Family<Metric>> family) {
  const std::string& name = family->name();
  Require(ValidName(name, /*allow_colon=*/true), "invalid metric name", name);
  const std::vector<std::string>& labels = family->label_names();
  for (size_t i = 0; i < labels.size(); ++i) {
    Require(ValidName(labels[i], /*allow_colon=*/false), "invalid label name", labels[i]);
    Require(!absl::StartsWith(labels[i], "__"), "reserved label name", labels[i]);
    Require(std::count(labels.begin(), labels.begin() + i, labels[i]) == 0,
            "label name given twice", labels[i]);
  }
  Family<Metric>& added = *family;
  absl::MutexLock lock(&mu_);
  for (const std::unique_ptr<FamilyBase>& existing : families_) {
    Require(existing->name() != name, "metric registered twice", name);
  }
  families_.push_back(std::move(family));
  return added;
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
  return Add(std::make_unique<Family<Counter>>(std::move(name), std::move(help),
                                               MetricType::kCounter, std::move(label_names),
                                               [] { return std::make_unique<Counter>(); }));
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> label_names) {
  return Add(std::make_unique<Family<Gauge>>(std::move(name), std::move(help), MetricType::kGauge,
                                             std::move(label_names),
                                             [] { return std::make_unique<Gauge>(); }));
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  for (size_t i = 0; i < bounds.size(); ++i) {
    Require(std::isfinite(bounds[i]) && (i == 0 || bounds[i - 1] < bounds[i]),
            "histogram bounds must be finite and strictly increasing", name);
  }
  for (const std::string& label : label_names) {
    Require(label != "le", "\"le\" is the bucket label of histogram", name);
  }
  return Add(std::make_unique<Family<Histogram>>(
      std::move(name), std::move(help), MetricType::kHistogram, std::move(label_names),
      [bounds = std::move(bounds)] { return std::make_unique<Histogram>(bounds); }));
}

void Registry::AddCollectHook(std::function<void()> hook) {
  absl::MutexLock lock(&mu_);
  hooks_.push_back(std::move(hook));
}

std::vector<FamilySnapshot> Registry::Collect() const {
  // A reader lock: two scrapes at once run side by side.
  absl::ReaderMutexLock lock(&mu_);
  for (const std::function<void()>& hook : hooks_) hook();
  std::vector<FamilySnapshot> snapshots;
  snapshots.reserve(families_.size());
  for (const std::unique_ptr<FamilyBase>& family : families_) {
    snapshots.push_back(family->Collect());
  }
  return snapshots;
}

}  // namespace fisherd::metrics
