// The text exposition format against exact expected text: HELP and TYPE lines, label
// escaping, labels with empty values left out, cumulative histogram buckets ending in
// +Inf, _sum and _count, and how numbers are written.
#include "metrics/exposition.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace fisherd::metrics {
namespace {

Sample Value(std::vector<std::string> labels, double value) {
  Sample sample;
  sample.label_values = std::move(labels);
  sample.value = value;
  return sample;
}

TEST(ExpositionTest, CounterWithLabelsEscapedAndEmptyOnesLeftOut) {
  FamilySnapshot family;
  family.name = "jobs_total";
  family.help = "Jobs by \"state\",\nwith a \\ in the help.";
  family.type = MetricType::kCounter;
  family.label_names = {"state", "reason"};
  family.samples = {Value({"done", ""}, 3), Value({"failed", "disk \"full\"\nC:\\tmp"}, 1)};
  EXPECT_EQ(RenderText({family}),
            "# HELP jobs_total Jobs by \"state\",\\nwith a \\\\ in the help.\n"
            "# TYPE jobs_total counter\n"
            "jobs_total{state=\"done\"} 3\n"
            "jobs_total{state=\"failed\",reason=\"disk \\\"full\\\"\\nC:\\\\tmp\"} 1\n");
}

TEST(ExpositionTest, GaugeWithoutLabels) {
  FamilySnapshot family;
  family.name = "queue_bytes";
  family.help = "Bytes queued.";
  family.type = MetricType::kGauge;
  family.samples = {Value({}, 1048576)};
  EXPECT_EQ(RenderText({family}),
            "# HELP queue_bytes Bytes queued.\n"
            "# TYPE queue_bytes gauge\n"
            "queue_bytes 1048576\n");
}

TEST(ExpositionTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  FamilySnapshot family;
  family.name = "op_duration_seconds";
  family.help = "Time of one op.";
  family.type = MetricType::kHistogram;
  family.label_names = {"op", "shard"};
  Sample read;
  read.label_values = {"read", ""};
  read.histogram.bounds = {0.0001, 0.5, 2};
  read.histogram.counts = {1, 0, 2, 1};  // the last: above every bound
  read.histogram.sum = 5.25;
  Sample write;
  write.label_values = {"write", "a"};
  write.histogram.bounds = {0.0001, 0.5, 2};
  write.histogram.counts = {0, 0, 0, 0};
  family.samples = {read, write};
  EXPECT_EQ(RenderText({family}),
            "# HELP op_duration_seconds Time of one op.\n"
            "# TYPE op_duration_seconds histogram\n"
            "op_duration_seconds_bucket{op=\"read\",le=\"0.0001\"} 1\n"
            "op_duration_seconds_bucket{op=\"read\",le=\"0.5\"} 1\n"
            "op_duration_seconds_bucket{op=\"read\",le=\"2\"} 3\n"
            "op_duration_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n"
            "op_duration_seconds_sum{op=\"read\"} 5.25\n"
            "op_duration_seconds_count{op=\"read\"} 4\n"
            "op_duration_seconds_bucket{op=\"write\",shard=\"a\",le=\"0.0001\"} 0\n"
            "op_duration_seconds_bucket{op=\"write\",shard=\"a\",le=\"0.5\"} 0\n"
            "op_duration_seconds_bucket{op=\"write\",shard=\"a\",le=\"2\"} 0\n"
            "op_duration_seconds_bucket{op=\"write\",shard=\"a\",le=\"+Inf\"} 0\n"
            "op_duration_seconds_sum{op=\"write\",shard=\"a\"} 0\n"
            "op_duration_seconds_count{op=\"write\",shard=\"a\"} 0\n");
}

TEST(ExpositionTest, UnlabelledHistogramHasOnlyLeOnBuckets) {
  FamilySnapshot family;
  family.name = "wait_seconds";
  family.help = "Waits.";
  family.type = MetricType::kHistogram;
  Sample sample;
  sample.histogram.bounds = {1};
  sample.histogram.counts = {2, 0};
  sample.histogram.sum = 0.75;
  family.samples = {sample};
  EXPECT_EQ(RenderText({family}),
            "# HELP wait_seconds Waits.\n"
            "# TYPE wait_seconds histogram\n"
            "wait_seconds_bucket{le=\"1\"} 2\n"
            "wait_seconds_bucket{le=\"+Inf\"} 2\n"
            "wait_seconds_sum 0.75\n"
            "wait_seconds_count 2\n");
}

TEST(ExpositionTest, FamiliesInOrderAndALabelledFamilyWithoutSeries) {
  FamilySnapshot empty;
  empty.name = "b_total";
  empty.help = "Nothing yet.";
  empty.label_names = {"kind"};
  FamilySnapshot one;
  one.name = "a";
  one.help = "One.";
  one.type = MetricType::kGauge;
  one.samples = {Value({}, -2.5)};
  EXPECT_EQ(RenderText({empty, one}),
            "# HELP b_total Nothing yet.\n"
            "# TYPE b_total counter\n"
            "# HELP a One.\n"
            "# TYPE a gauge\n"
            "a -2.5\n");
}

TEST(ExpositionTest, LabelValueEscaping) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeLabelValue("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(EscapeLabelValue("two\nlines"), "two\\nlines");
  EXPECT_EQ(EscapeLabelValue("tab\tand unicode \xc3\xa9"), "tab\tand unicode \xc3\xa9");
  // HELP escapes backslash and newline only.
  EXPECT_EQ(EscapeHelp("a \"b\" \\ c\nd"), "a \"b\" \\\\ c\\nd");
}

TEST(ExpositionTest, NumberFormats) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-0.0), "0");
  EXPECT_EQ(FormatValue(42), "42");
  EXPECT_EQ(FormatValue(-3), "-3");
  EXPECT_EQ(FormatValue(8589934592.0), "8589934592");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(2.5), "2.5");
  EXPECT_EQ(FormatValue(0.0001), "0.0001");
  EXPECT_EQ(FormatValue(0.00025), "0.00025");
  EXPECT_EQ(FormatValue(0.000025), "2.5e-05");
  EXPECT_EQ(FormatValue(1e-7), "1e-07");
  EXPECT_EQ(FormatValue(1234567.25), "1234567.25");
  EXPECT_EQ(FormatValue(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(FormatValue(9007199254740992.0), "9.007199254740992e+15");  // 2^53
  EXPECT_EQ(FormatValue(1e300), "1e+300");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
}

}  // namespace
}  // namespace fisherd::metrics
