#include "metrics/exposition.h"

#include <charconv>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace fisherd::metrics {
namespace {

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// `{a="x",b="y"}` for the non-empty values, plus `extra` (the bucket's le) when given;
// nothing at all when every value is empty and there is no extra.
void AppendLabels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                  absl::string_view extra_name, absl::string_view extra_value, std::string* out) {
  bool open = false;
  auto append = [&](absl::string_view name, absl::string_view value) {
    absl::StrAppend(out, open ? "," : "{", name, "=\"", EscapeLabelValue(value), "\"");
    open = true;
  };
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    if (!values[i].empty()) append(names[i], values[i]);
  }
  if (!extra_name.empty()) append(extra_name, extra_value);
  if (open) out->push_back('}');
}

void AppendSample(absl::string_view name, absl::string_view suffix,
                  const std::vector<std::string>& label_names, const Sample& sample,
                  absl::string_view le, double value, std::string* out) {
  absl::StrAppend(out, name, suffix);
  AppendLabels(label_names, sample.label_values, le.empty() ? "" : "le", le, out);
  absl::StrAppend(out, " ", FormatValue(value), "\n");
}

void AppendHistogram(const FamilySnapshot& family, const Sample& sample, std::string* out) {
  const HistogramValue& h = sample.histogram;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    const std::string le = i < h.bounds.size() ? FormatValue(h.bounds[i]) : "+Inf";
    AppendSample(family.name, "_bucket", family.label_names, sample, le,
                 static_cast<double>(cumulative), out);
  }
  AppendSample(family.name, "_sum", family.label_names, sample, "", h.sum, out);
  AppendSample(family.name, "_count", family.label_names, sample, "",
               static_cast<double>(cumulative), out);
}

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (const char c : value) {
    switch (c) {
      case '\\':
        escaped += "\\\\";
        break;
      case '"':
        escaped += "\\\"";
        break;
      case '\n':
        escaped += "\\n";
        break;
      default:
        escaped += c;
    }
  }
  return escaped;
}

std::string EscapeHelp(absl::string_view help) {
  std::string escaped;
  escaped.reserve(help.size());
  for (const char c : help) {
    if (c == '\\') {
      escaped += "\\\\";
    } else if (c == '\n') {
      escaped += "\\n";
    } else {
      escaped += c;
    }
  }
  return escaped;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Counts and byte sizes read better as digits than as "1.048576e+06".
  constexpr double kExactIntegers = 9007199254740992.0;  // 2^53
  const double magnitude = std::fabs(value);
  if (value == std::trunc(value) && magnitude < kExactIntegers) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  // Without a precision, to_chars writes the shortest text that reads back exactly.
  // Fixed notation down to 1e-4, as Prometheus' own clients write bucket bounds: "le" is
  // compared as text in queries, so 0.0001 had better not read "1e-04".
  char buffer[64];
  const std::chars_format format = magnitude >= 1e-4 && magnitude < kExactIntegers
                                       ? std::chars_format::fixed
                                       : std::chars_format::scientific;
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof buffer, value, format);
  return std::string(buffer, result.ptr);
}

std::string RenderText(const std::vector<FamilySnapshot>& families) {
  std::string out;
  for (const FamilySnapshot& family : families) {
    absl::StrAppend(&out, "# HELP ", family.name, " ", EscapeHelp(family.help), "\n");
    absl::StrAppend(&out, "# TYPE ", family.name, " ", TypeName(family.type), "\n");
    for (const Sample& sample : family.samples) {
      if (family.type == MetricType::kHistogram) {
        AppendHistogram(family, sample, &out);
      } else {
        AppendSample(family.name, "", family.label_names, sample, "", sample.value, &out);
      }
    }
  }
  return out;
}

}  // namespace fisherd::metrics
