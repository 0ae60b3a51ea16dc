#include "storage/fault_injection.h"

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace fisherd {
namespace {

constexpr absl::string_view kKnownPoints[] = {
    kFaultJournalBeforeWrite,   kFaultJournalAfterWrite,     kFaultJournalAfterSync,
    kFaultSnapshotBeforeRename, kFaultSnapshotBeforeDirSync, kFaultJournalBeforeTruncate,
};

struct FaultSpec {
  bool armed = false;
  std::string point;
  int64_t occurrence = 1;
  std::atomic<int64_t> reached{0};
};

FaultSpec* ParseFaultSpec() {
  auto* spec = new FaultSpec;  // never destroyed: MaybeCrashAt may run during exit
  const char* value = std::getenv(kFaultEnvironmentVariable);
  if (value == nullptr || *value == '\0') return spec;
  std::pair<std::string, std::string> parts = absl::StrSplit(value, absl::MaxSplits(':', 1));
  int64_t occurrence = 1;
  if (!parts.second.empty() && (!absl::SimpleAtoi(parts.second, &occurrence) || occurrence < 1)) {
    std::fprintf(stderr,
                 "fisherd: %s=%s: the count after ':' must be a positive integer; "
                 "no fault will be injected\n",
                 kFaultEnvironmentVariable, value);
    return spec;
  }
  bool known = false;
  for (absl::string_view point : kKnownPoints) known = known || point == parts.first;
  if (!known) {
    std::string points;
    for (absl::string_view point : kKnownPoints) {
      if (!points.empty()) points += ", ";
      points.append(point.data(), point.size());
    }
    std::fprintf(stderr, "fisherd: %s=%s names an unknown fault point; known points: %s\n",
                 kFaultEnvironmentVariable, value, points.c_str());
    return spec;
  }
  spec->armed = true;
  spec->point = parts.first;
  spec->occurrence = occurrence;
  return spec;
}

}  // namespace

void MaybeCrashAt(absl::string_view point) {
  static FaultSpec* const spec = ParseFaultSpec();  // thread-safe initialization
  if (!spec->armed || point != spec->point) return;
  if (spec->reached.fetch_add(1) + 1 == spec->occurrence) {
    raise(SIGKILL);
  }
}

}  // namespace fisherd
