// A small Prometheus-style metrics registry: counters, gauges and histograms, each a
// family of children told apart by label values. Debian 12 packages no Prometheus client
// library, and fisherd needs only this much.
//
// The hot path is lock-free: a child is looked up once (WithLabels takes the family's
// mutex) and the pointer kept; Increment, Set and Observe are then relaxed atomic
// operations on that child. Reading (Registry::Collect) takes a consistent-enough view
// for scraping: every value is read atomically, but two values are not read together
// (a histogram's _count is derived from its buckets, so those two always agree).
//
// Knows nothing of fisherd, gRPC or HTTP: metrics/exposition.h turns what Collect returns
// into Prometheus' text format, and metrics/http_exporter.h serves it.
#ifndef FISHERD_METRICS_METRICS_H_
#define FISHERD_METRICS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fisherd::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// A histogram's state as read: per-bucket counts, not cumulative (the renderer
// accumulates them).
struct HistogramValue {
  std::vector<double> bounds;    // upper bounds ("le"), ascending, +Inf not included
  std::vector<uint64_t> counts;  // bounds.size() + 1: the last counts what exceeds every bound
  double sum = 0.0;
};

// One child of a family as read.
struct Sample {
  std::vector<std::string> label_values;  // one per label name of the family
  double value = 0.0;                     // counters and gauges
  HistogramValue histogram;               // histograms
};

// One family as read, ready to render.
struct FamilySnapshot {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  std::vector<std::string> label_names;
  std::vector<Sample> samples;  // sorted by label values
};

// Only goes up. Integer, since everything fisherd counts is a count.
class Counter {
 public:
  void Increment(uint64_t by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into buckets by upper bound, and sums them.
class Histogram {
 public:
  // REQUIRES: bounds finite and strictly increasing (Registry::AddHistogram checks).
  explicit Histogram(std::vector<double> bounds);

  // An observation lands in the first bucket whose bound is >= value; NaN counts only
  // in +Inf (and makes the sum NaN), as Prometheus' own clients do.
  void Observe(double value);
  HistogramValue Read() const;

 private:
  const std::vector<double> bounds_;
  const std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0.0};
};

// What the registry needs of a family, whatever its metric type.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, MetricType type,
             std::vector<std::string> label_names)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(type),
        label_names_(std::move(label_names)) {}
  virtual ~FamilyBase() = default;

  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  FamilySnapshot Collect() const;

 protected:
  // Appends one Sample per child, in label-value order.
  virtual void CollectSamples(std::vector<Sample>* samples) const = 0;
  // Aborts unless `values` has one entry per label name (a bug in the caller).
  void CheckLabelCount(size_t values) const;

 private:
  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
};

// The children of one metric name. A family without labels has exactly one child,
// created with it (so it is exported as 0 before its first use); a labelled family
// creates each child at its first WithLabels.
template <typename Metric>
class Family final : public FamilyBase {
 public:
  using Factory = std::function<std::unique_ptr<Metric>()>;

  Family(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
         Factory factory)
      : FamilyBase(std::move(name), std::move(help), type, std::move(label_names)),
        factory_(std::move(factory)) {
    if (this->label_names().empty()) WithLabels({});
  }

  // The child with these label values, one per label name in order (an empty value is
  // the same series as the label left out). Keep the reference: it stays valid as long
  // as the family, and using it takes no lock. Label values must come from a small
  // fixed set (never request data): every distinct combination is a series forever.
  Metric& WithLabels(const std::vector<std::string>& values) ABSL_LOCKS_EXCLUDED(mu_) {
    CheckLabelCount(values.size());
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Metric>& child = children_[values];
    if (child == nullptr) child = factory_();
    return *child;
  }

 private:
  void CollectSamples(std::vector<Sample>* samples) const override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) {
      Sample sample;
      sample.label_values = values;
      Read(*child, &sample);
      samples->push_back(std::move(sample));
    }
  }

  static void Read(const Counter& c, Sample* s) { s->value = static_cast<double>(c.value()); }
  static void Read(const Gauge& g, Sample* s) { s->value = g.value(); }
  static void Read(const Histogram& h, Sample* s) { s->histogram = h.Read(); }

  const Factory factory_;
  mutable absl::Mutex mu_;
  // std::map: children come out sorted, so the exposition is deterministic.
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> children_ ABSL_GUARDED_BY(mu_);
};

// The set of families one process exports, in registration order.
//
// Names follow Prometheus' rules ([a-zA-Z_:][a-zA-Z0-9_:]* for metrics,
// [a-zA-Z_][a-zA-Z0-9_]* for labels, no "__" prefix, no "le" on a histogram) and are
// unique. A violation aborts: names are constants in the code, so a bad one is a bug
// that the first test run shows.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names = {}) ABSL_LOCKS_EXCLUDED(mu_);
  Family<Gauge>& AddGauge(std::string name, std::string help,
                          std::vector<std::string> label_names = {}) ABSL_LOCKS_EXCLUDED(mu_);
  // `bounds`: the buckets' upper bounds, finite and strictly increasing; +Inf is implied.
  Family<Histogram>& AddHistogram(std::string name, std::string help, std::vector<double> bounds,
                                  std::vector<std::string> label_names = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `hook` at the start of every Collect, e.g. to set gauges sampled from state
  // kept elsewhere (the number of sessions), which is cheaper than keeping them current
  // on every change. Hooks may run concurrently with each other (two scrapes at once)
  // and must not call into this registry but through their metrics' references.
  void AddCollectHook(std::function<void()> hook) ABSL_LOCKS_EXCLUDED(mu_);

  // Every family, in registration order, after running the hooks.
  std::vector<FamilySnapshot> Collect() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Checks the names and takes ownership.
  template <typename Metric>
  Family<Metric>& Add(std::unique_ptr<Family<Metric>> family) ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> hooks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fisherd::metrics

#endif  // FISHERD_METRICS_METRICS_H_
