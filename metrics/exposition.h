// Prometheus' text exposition format, version 0.0.4: what a Prometheus server (and
// `promtool check metrics`) reads from GET /metrics.
//
//   # HELP <name> <help, with \ and newline escaped>
//   # TYPE <name> counter|gauge|histogram
//   <name>{<label>="<value, with \ " and newline escaped>",...} <value>
//
// A histogram <name> is written as cumulative <name>_bucket{...,le="<bound>"} lines
// ending with le="+Inf", then <name>_sum and <name>_count (which equals the +Inf
// bucket). A label whose value is empty is left out: Prometheus treats the two alike,
// and the output stays short for families where a label applies only to some series.
#ifndef FISHERD_METRICS_EXPOSITION_H_
#define FISHERD_METRICS_EXPOSITION_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "metrics/metrics.h"

namespace fisherd::metrics {

// The Content-Type of RenderText's output.
inline constexpr absl::string_view kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

// The families in the order given, each with its HELP and TYPE lines.
std::string RenderText(const std::vector<FamilySnapshot>& families);

// The pieces, exposed for their tests.
// A label value between double quotes: backslash, double quote and newline escaped.
std::string EscapeLabelValue(absl::string_view value);
// A HELP text: backslash and newline escaped.
std::string EscapeHelp(absl::string_view help);
// A sample value or bucket bound: integers below 2^53 in plain digits ("1048576"),
// other values as the shortest text that reads back to the same double, in fixed
// notation from 1e-4 ("0.0001", "2.5") and in scientific notation below ("2.5e-05"), as
// Prometheus' own clients write them; and "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

}  // namespace fisherd::metrics

#endif  // FISHERD_METRICS_EXPOSITION_H_
