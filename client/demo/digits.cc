#include "client/demo/digits.h"

#include <zlib.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace fisherd::demo {
namespace {

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};

}  // namespace

absl::StatusOr<Digits> LoadDigits(const std::string& path) {
  // gzopen also reads an uncompressed file transparently.
  std::unique_ptr<gzFile_s, GzCloser> file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrFormat("cannot open %s (pass --data=PATH)", path));
  }
  std::vector<double> values;  // row-major pixels, scaled
  std::vector<int> labels;
  char line[1024];
  int line_number = 0;
  while (gzgets(file.get(), line, sizeof(line)) != nullptr) {
    ++line_number;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(text, ',');
    if (fields.size() != kPixels + 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s:%d: %d fields, expected %d pixels and a label", path, line_number,
                          fields.size(), kPixels + 1));
    }
    for (int j = 0; j <= kPixels; ++j) {
      int v;
      const int max = j < kPixels ? 16 : kClasses - 1;
      if (!absl::SimpleAtoi(fields[j], &v) || v < 0 || v > max) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s:%d: field %d is '%s', expected an integer in [0, %d]", path,
                            line_number, j + 1, fields[j], max));
      }
      if (j < kPixels) {
        values.push_back(v / 16.0);
      } else {
        labels.push_back(v);
      }
    }
  }
  int error = Z_OK;
  gzerror(file.get(), &error);
  if (error != Z_OK && error != Z_STREAM_END) {
    return absl::DataLossError(absl::StrFormat("%s: corrupt gzip data", path));
  }
  if (labels.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s: no rows", path));

  Digits digits;
  const Eigen::Index n = static_cast<Eigen::Index>(labels.size());
  digits.features.resize(n, kFeatures);
  digits.features.leftCols(kPixels) =
      Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          values.data(), n, kPixels);
  digits.features.col(kPixels).setOnes();
  digits.labels = std::move(labels);
  return digits;
}

}  // namespace fisherd::demo
