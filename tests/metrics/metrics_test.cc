// The registry: what counters, gauges and histograms hold after use, rendered exactly;
// children per label values; collect hooks; counts under concurrent use; and the names
// it refuses.
#include "metrics/metrics.h"

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "metrics/exposition.h"

namespace fisherd::metrics {
namespace {

TEST(MetricsRegistryTest, RendersWhatWasRecordedInRegistrationOrder) {
  Registry registry;
  Family<Counter>& requests = registry.AddCounter("app_requests_total", "Requests.", {"code"});
  Counter& total = registry.AddCounter("app_bytes_total", "Bytes.").WithLabels({});
  Gauge& open = registry.AddGauge("app_open_connections", "Open connections.").WithLabels({});
  Histogram& latency =
      registry.AddHistogram("app_latency_seconds", "Latency.", {0.25, 1, 4}).WithLabels({});

  requests.WithLabels({"OK"}).Increment();
  requests.WithLabels({"OK"}).Increment(2);
  requests.WithLabels({"NOT_FOUND"}).Increment();
  total.Increment(4096);
  open.Set(3);
  open.Add(-1.5);
  latency.Observe(0.25);  // on a bound: that bucket (le is "less or equal")
  latency.Observe(0.5);
  latency.Observe(3);
  latency.Observe(7);

  EXPECT_EQ(RenderText(registry.Collect()),
            "# HELP app_requests_total Requests.\n"
            "# TYPE app_requests_total counter\n"
            "app_requests_total{code=\"NOT_FOUND\"} 1\n"
            "app_requests_total{code=\"OK\"} 3\n"
            "# HELP app_bytes_total Bytes.\n"
            "# TYPE app_bytes_total counter\n"
            "app_bytes_total 4096\n"
            "# HELP app_open_connections Open connections.\n"
            "# TYPE app_open_connections gauge\n"
            "app_open_connections 1.5\n"
            "# HELP app_latency_seconds Latency.\n"
            "# TYPE app_latency_seconds histogram\n"
            "app_latency_seconds_bucket{le=\"0.25\"} 1\n"
            "app_latency_seconds_bucket{le=\"1\"} 2\n"
            "app_latency_seconds_bucket{le=\"4\"} 3\n"
            "app_latency_seconds_bucket{le=\"+Inf\"} 4\n"
            "app_latency_seconds_sum 10.75\n"
            "app_latency_seconds_count 4\n");
}

TEST(MetricsRegistryTest, UnlabelledMetricsAreExportedAsZeroBeforeUse) {
  Registry registry;
  registry.AddCounter("idle_total", "Never incremented.");
  registry.AddCounter("by_kind_total", "Labelled, no child yet.", {"kind"});
  EXPECT_EQ(RenderText(registry.Collect()),
            "# HELP idle_total Never incremented.\n"
            "# TYPE idle_total counter\n"
            "idle_total 0\n"
            "# HELP by_kind_total Labelled, no child yet.\n"
            "# TYPE by_kind_total counter\n");
}

TEST(MetricsRegistryTest, WithLabelsReturnsTheSameChildForTheSameValues) {
  Registry registry;
  Family<Counter>& family = registry.AddCounter("x_total", "X.", {"a", "b"});
  Counter& first = family.WithLabels({"1", "2"});
  EXPECT_EQ(&first, &family.WithLabels({"1", "2"}));
  EXPECT_NE(&first, &family.WithLabels({"2", "1"}));
}

TEST(MetricsRegistryTest, HistogramPutsNanInInfOnly) {
  Histogram histogram({1, 2});
  histogram.Observe(std::nan(""));
  histogram.Observe(2);
  const HistogramValue value = histogram.Read();
  EXPECT_EQ(value.counts, (std::vector<uint64_t>{0, 1, 1}));
  EXPECT_TRUE(std::isnan(value.sum));
}

TEST(MetricsRegistryTest, CollectHooksRunAtEveryCollect) {
  Registry registry;
  Gauge& gauge = registry.AddGauge("sampled", "Sampled at collection.").WithLabels({});
  int calls = 0;
  registry.AddCollectHook([&] { gauge.Set(++calls * 10); });
  EXPECT_EQ(registry.Collect()[0].samples[0].value, 10);
  EXPECT_EQ(registry.Collect()[0].samples[0].value, 20);
}

// Relaxed atomics lose nothing: every increment and observation is counted.
TEST(MetricsRegistryTest, ConcurrentUpdatesAreAllCounted) {
  Registry registry;
  Family<Counter>& counters = registry.AddCounter("c_total", "C.", {"t"});
  Histogram& histogram = registry.AddHistogram("h", "H.", {0.5}).WithLabels({});
  Gauge& gauge = registry.AddGauge("g", "G.").WithLabels({});
  constexpr int kThreads = 4, kPerThread = 20000;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& shared = counters.WithLabels({"shared"});
      for (int i = 0; i < kPerThread; ++i) {
        shared.Increment();
        counters.WithLabels({t % 2 == 0 ? "even" : "odd"}).Increment();
        histogram.Observe(i % 2 == 0 ? 0.25 : 1.0);  // sums exactly in binary
        gauge.Add(1);
      }
    });
  }
  // Scrapes while the writers run must not disturb them.
  for (int i = 0; i < 20; ++i) registry.Collect();
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(counters.WithLabels({"shared"}).value(), uint64_t{kThreads * kPerThread});
  EXPECT_EQ(counters.WithLabels({"even"}).value(), uint64_t{kThreads / 2 * kPerThread});
  const HistogramValue value = histogram.Read();
  EXPECT_EQ(value.counts,
            (std::vector<uint64_t>{kThreads * kPerThread / 2, kThreads * kPerThread / 2}));
  EXPECT_EQ(value.sum, kThreads * kPerThread * 0.625);  // half 0.25, half 1
  EXPECT_EQ(gauge.value(), kThreads * kPerThread);
}

// Names are constants in the code: a bad one stops the program at its first run.
TEST(MetricsRegistryDeathTest, BadNamesAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(Registry().AddCounter("9lives_total", "."), "invalid metric name");
  EXPECT_DEATH(Registry().AddCounter("a-b_total", "."), "invalid metric name");
  EXPECT_DEATH(Registry().AddCounter("ok_total", ".", {"bad:label"}), "invalid label name");
  EXPECT_DEATH(Registry().AddCounter("ok_total", ".", {"__name"}), "reserved label name");
  EXPECT_DEATH(Registry().AddCounter("ok_total", ".", {"a", "a"}), "label name given twice");
  EXPECT_DEATH(Registry().AddHistogram("h", ".", {1}, {"le"}), "bucket label");
  EXPECT_DEATH(Registry().AddHistogram("h", ".", {2, 1}), "strictly increasing");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddGauge("twice", ".");
        registry.AddGauge("twice", ".");
      },
      "registered twice");
  EXPECT_DEATH(Registry().AddCounter("ok_total", ".", {"a"}).WithLabels({"1", "2"}),
               "wrong number of label values");
}

}  // namespace
}  // namespace fisherd::metrics
