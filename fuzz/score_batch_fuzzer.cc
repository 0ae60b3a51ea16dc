// Score batch decoding, validation and application: the input is a layout selector, a
// kernel selector, then the bytes of a fisherd.v1.ScoreBatch. The batch is decoded
// against one of fuzz/layouts.h's sessions (server/batch_decoder, core/score_batch) and,
// when it decodes, applied to a fresh session, whose statistics are then read back
// (summary, F v, entries, a step). Errors are expected; crashes, UB and leaks are not.
//
// Input: [layout u8][flags u8][ScoreBatch bytes...]
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/session.h"
#include "fisherd/v1/fisher.pb.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/layouts.h"
#include "server/batch_decoder.h"
#include "server/conversions.h"

namespace {

using fisherd::fuzz::FuzzLayouts;

struct Layout {
  fisherd::SessionOptions options;
};

const std::vector<Layout>& Layouts() {
  static const std::vector<Layout>* layouts = [] {
    auto* out = new std::vector<Layout>;
    for (const auto& l : FuzzLayouts()) {
      auto options = fisherd::server::SessionOptionsFromProto(l.config);
      FUZZ_CHECK(options.ok());
      out->push_back(Layout{*options});
    }
    return out;
  }();
  return *layouts;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const Layout& layout = Layouts()[in.U8() % Layouts().size()];
  const uint8_t flags = in.U8();
  const std::string bytes = in.Rest();

  fisherd::v1::ScoreBatch batch;
  if (!batch.ParseFromString(bytes)) return 0;

  fisherd::Session session(layout.options);
  absl::StatusOr<fisherd::PreparedBatch> prepared =
      fisherd::server::DecodeScoreBatch(batch, layout.options, session.layout());
  if (fisherd::fuzz::Verbose()) {
    std::fprintf(stderr, "decode: %s\n", prepared.status().ToString().c_str());
  }
  if (!prepared.ok()) {
    // Every refusal names the batch it refused.
    FUZZ_CHECK(!prepared.status().message().empty());
    FUZZ_CHECK(prepared.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(prepared->rows == batch.rows());
  // Applied twice: the second time a duplicate unless anonymous.
  const fisherd::AddResult first =
      session.AddScores(batch.worker_id(), batch.sequence(), *prepared);
  FUZZ_CHECK(!first.duplicate);
  const fisherd::AddResult second =
      session.AddScores(batch.worker_id(), batch.sequence(), *prepared);
  FUZZ_CHECK(second.duplicate == !batch.worker_id().empty());

  // Read the statistics back every way a client can.
  const int64_t dim = layout.options.dim;
  session.Summarize(/*with_eigenvalues=*/(flags & 1) != 0).IgnoreError();
  Eigen::VectorXd v = Eigen::VectorXd::LinSpaced(dim, -1.0, 1.0);
  session.FisherVectorProduct(v).IgnoreError();
  std::vector<double> entries(static_cast<size_t>(dim * session.EntriesPerRow()));
  session.CopyEntries(0, dim, entries.data()).IgnoreError();
  for (int64_t b = -1; b < session.layout().size(); ++b) {
    for (fisherd::Factor factor : {fisherd::Factor::kNone, fisherd::Factor::kActivations,
                                   fisherd::Factor::kOutputGradients}) {
      const fisherd::EstimatePart part{b, factor};
      if (!session.CheckPart(part).ok()) continue;
      const absl::StatusOr<fisherd::PartReading> reading =
          session.ReadPart(part, (flags & 2) != 0, /*with_entries=*/true);
      if (reading.ok()) {
        FUZZ_CHECK(static_cast<int64_t>(reading->entries.size()) ==
                   session.PartRows(part) * session.PartEntriesPerRow(part));
      }
    }
  }
  fisherd::StepOptions step;
  if (flags & 4) step.damping = 1e-3;
  if (flags & 8) step.kl_budget = 0.01;
  step.skip_decay = (flags & 16) != 0;
  absl::StatusOr<fisherd::StepResult> result = session.Step(v, step);
  if (result.ok()) FUZZ_CHECK(result->natural_gradient.size() == dim);
  session.Stats();
  return 0;
}
