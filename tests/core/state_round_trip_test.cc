// Durable sessions' state (core/state_visitor.h, ScoreStatistics::VisitState): every
// statistics kind saved through an in-memory visitor and restored into a freshly
// constructed object of the same options; Kronecker refreshes taken from the solves
// that made them (TakeRefreshes) and replayed without solving (ReplayRefresh).
//
// Tolerance: none. The claim is that a restored or replayed statistics IS the original,
// to the bit: it holds the same numbers and runs the same deterministic kernels on them,
// now and after any further Adds, Decays, steps and solves. Every double is compared by
// its bits (a -0 for a 0, or another NaN, fails too). Caches (a Cholesky factor) are not
// state, so whether a solve reused one may differ after a restore; everything it
// returns may not.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dense_statistics.h"
#include "core/diagonal_statistics.h"
#include "core/kronecker_statistics.h"
#include "core/layered_statistics.h"
#include "core/low_rank_statistics.h"
#include "core/session.h"
#include "core/state_visitor.h"
#include "core/statistics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing::Block;
using ::fisherd::testing::Kronecker;
using ::fisherd::testing::RandomRows;
using ::fisherd::testing::RandomWeights;
using ::testing::HasSubstr;
using testing::RowMatrixF;

// --- an in-memory snapshot ---

// Records every value VisitState names, in order, with its scoped name and kind; loading
// replays the record and fails on the first name or kind that differs, as a snapshot
// file's reader would.
class MemoryStateVisitor final : public StateVisitor {
 public:
  enum class Kind { kScalar, kCount, kInteger, kFlag, kVector, kMatrix, kUpperTriangle };
  struct Entry {
    std::string name;  // "scope/.../name"
    Kind kind = Kind::kScalar;
    uint64_t count = 0;
    int64_t integer = 0;  // kInteger, and kFlag as 0 or 1
    int64_t rows = 0;     // arrays; a triangle's n
    int64_t cols = 0;
    std::vector<double> values;  // kScalar's one value; arrays column-major; a triangle
                                 // column by column
  };

  // Saving.
  MemoryStateVisitor() = default;
  // Loading what a save recorded.
  explicit MemoryStateVisitor(std::vector<Entry> entries)
      : loading_(true), entries_(std::move(entries)) {}

  bool loading() const override { return loading_; }

  void Scalar(absl::string_view name, double* value) override {
    Entry* entry = Next(name, Kind::kScalar);
    if (entry == nullptr) return;
    if (loading_) {
      *value = entry->values.at(0);
    } else {
      entry->values = {*value};
    }
  }
  void Count(absl::string_view name, uint64_t* value) override {
    Entry* entry = Next(name, Kind::kCount);
    if (entry == nullptr) return;
    if (loading_) {
      *value = entry->count;
    } else {
      entry->count = *value;
    }
  }
  void Integer(absl::string_view name, int64_t* value) override {
    Entry* entry = Next(name, Kind::kInteger);
    if (entry == nullptr) return;
    if (loading_) {
      *value = entry->integer;
    } else {
      entry->integer = *value;
    }
  }
  void Flag(absl::string_view name, bool* value) override {
    Entry* entry = Next(name, Kind::kFlag);
    if (entry == nullptr) return;
    if (loading_) {
      *value = entry->integer != 0;
    } else {
      entry->integer = *value ? 1 : 0;
    }
  }
  void Vector(absl::string_view name, Eigen::VectorXd* values) override {
    Entry* entry = Next(name, Kind::kVector);
    if (entry == nullptr) return;
    if (loading_) {
      *values = Eigen::Map<const Eigen::VectorXd>(entry->values.data(), entry->rows);
    } else {
      entry->rows = values->size();
      entry->cols = 1;
      entry->values.assign(values->data(), values->data() + values->size());
    }
  }
  void Matrix(absl::string_view name, Eigen::MatrixXd* values) override {
    Entry* entry = Next(name, Kind::kMatrix);
    if (entry == nullptr) return;
    if (loading_) {
      *values = Eigen::Map<const Eigen::MatrixXd>(entry->values.data(), entry->rows, entry->cols);
    } else {
      entry->rows = values->rows();
      entry->cols = values->cols();
      entry->values.assign(values->data(), values->data() + values->size());
    }
  }
  void UpperTriangle(absl::string_view name, Eigen::MatrixXd* values) override {
    Entry* entry = Next(name, Kind::kUpperTriangle);
    if (entry == nullptr) return;
    const int64_t n = values->rows();
    if (values->cols() != n) {
      Fail(absl::InternalError(absl::StrCat(entry->name,
                                            ": UpperTriangle REQUIRES a square "
                                            "matrix, got ",
                                            n, " x ", values->cols())));
      return;
    }
    if (loading_ && entry->rows != n) {
      Fail(absl::DataLossError(absl::StrCat(entry->name, " is a triangle of ", entry->rows,
                                            " columns, loaded into ", n)));
      return;
    }
    if (!loading_) {
      entry->rows = entry->cols = n;
      entry->values.clear();
    }
    size_t k = 0;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i <= j; ++i) {
        if (loading_) {
          (*values)(i, j) = entry->values.at(k++);
        } else {
          entry->values.push_back((*values)(i, j));
        }
      }
    }
  }

  void Enter(absl::string_view scope) override { scopes_.emplace_back(scope); }
  void Leave() override {
    if (scopes_.empty()) {
      Fail(absl::InternalError("Leave without Enter"));
    } else {
      scopes_.pop_back();
    }
  }

  void Fail(absl::Status status) override {
    if (status_.ok()) status_ = std::move(status);
  }
  absl::Status status() const override { return status_; }

  // The status once VisitState returned: it must have left every scope and, loading,
  // read every entry.
  absl::Status Finish() {
    if (!scopes_.empty()) {
      Fail(absl::InternalError(absl::StrCat("scope ", scopes_.back(), " not left")));
    }
    if (loading_ && status_.ok() && position_ != entries_.size()) {
      Fail(absl::DataLossError(
          absl::StrCat("entry ", entries_[position_].name, " and later ones were not read")));
    }
    return status_;
  }

  const std::vector<Entry>& entries() const { return entries_; }

 private:
  // The entry `name` of `kind`: a new one when saving; when loading the next one, which
  // must have that name and kind. nullptr once failed.
  Entry* Next(absl::string_view name, Kind kind) {
    if (!status_.ok()) return nullptr;
    std::string full = absl::StrJoin(scopes_, "/");
    absl::StrAppend(&full, scopes_.empty() ? "" : "/", name);
    if (!loading_) {
      Entry& entry = entries_.emplace_back();
      entry.name = std::move(full);
      entry.kind = kind;
      return &entry;
    }
    if (position_ >= entries_.size()) {
      Fail(absl::DataLossError(absl::StrCat("the snapshot ends before ", full)));
      return nullptr;
    }
    Entry& entry = entries_[position_];
    if (entry.name != full || entry.kind != kind) {
      Fail(absl::DataLossError(absl::StrCat("expected ", full, " of kind ", static_cast<int>(kind),
                                            ", the snapshot has ", entry.name, " of kind ",
                                            static_cast<int>(entry.kind))));
      return nullptr;
    }
    ++position_;
    return &entry;
  }

  const bool loading_ = false;
  std::vector<Entry> entries_;
  size_t position_ = 0;
  std::vector<std::string> scopes_;
  absl::Status status_;
};

using Snapshot = std::vector<MemoryStateVisitor::Entry>;

Snapshot Save(ScoreStatistics& statistics) {
  MemoryStateVisitor visitor;
  statistics.VisitState(visitor);
  const absl::Status status = visitor.Finish();
  EXPECT_TRUE(status.ok()) << status;
  return visitor.entries();
}

absl::Status Restore(const Snapshot& snapshot, ScoreStatistics& statistics) {
  MemoryStateVisitor visitor(snapshot);
  statistics.VisitState(visitor);
  return visitor.Finish();
}

MemoryStateVisitor::Entry* Find(Snapshot& snapshot, const std::string& name) {
  for (MemoryStateVisitor::Entry& entry : snapshot) {
    if (entry.name == name) return &entry;
  }
  ADD_FAILURE() << "no entry " << name;
  return nullptr;
}

bool Has(const Snapshot& snapshot, const std::string& name) {
  for (const MemoryStateVisitor::Entry& entry : snapshot) {
    if (entry.name == name) return true;
  }
  return false;
}

// --- bitwise comparisons ---

uint64_t Bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

void ExpectSameBits(double actual, double expected, const std::string& what) {
  EXPECT_EQ(Bits(actual), Bits(expected))
      << what << ": " << std::hexfloat << actual << " != " << expected << std::defaultfloat;
}

void ExpectSameBits(const double* actual, const double* expected, int64_t size,
                    const std::string& what) {
  for (int64_t i = 0; i < size; ++i) {
    if (Bits(actual[i]) != Bits(expected[i])) {
      ADD_FAILURE() << what << "[" << i << "]: " << std::hexfloat << actual[i]
                    << " != " << expected[i] << std::defaultfloat;
      return;  // one is enough
    }
  }
}

void ExpectSameBits(const Eigen::VectorXd& actual, const Eigen::VectorXd& expected,
                    const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  ExpectSameBits(actual.data(), expected.data(), actual.size(), what);
}

void ExpectSameSnapshot(const Snapshot& actual, const Snapshot& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t k = 0; k < actual.size(); ++k) {
    const MemoryStateVisitor::Entry &a = actual[k], &e = expected[k];
    SCOPED_TRACE(e.name);
    EXPECT_EQ(a.name, e.name);
    EXPECT_EQ(a.kind, e.kind);
    EXPECT_EQ(a.count, e.count);
    EXPECT_EQ(a.integer, e.integer);
    EXPECT_EQ(a.rows, e.rows);
    EXPECT_EQ(a.cols, e.cols);
    ASSERT_EQ(a.values.size(), e.values.size());
    ExpectSameBits(a.values.data(), e.values.data(), static_cast<int64_t>(a.values.size()),
                   "values");
  }
}

Eigen::VectorXd RandomVector(int64_t size, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  Eigen::VectorXd v(size);
  for (double& x : v) x = normal(rng);
  return v;
}

// Every const answer of `actual` against `expected`'s.
void ExpectSameAnswers(const ScoreStatistics& actual, const ScoreStatistics& expected) {
  ASSERT_EQ(actual.dim(), expected.dim());
  const int64_t n = expected.dim();
  EXPECT_EQ(actual.sample_count(), expected.sample_count());
  ExpectSameBits(actual.weight_sum(), expected.weight_sum(), "weight_sum");
  ASSERT_EQ(actual.EntriesPerRow(), expected.EntriesPerRow());
  const absl::Status ready = expected.CheckReady("a test");
  EXPECT_EQ(actual.CheckReady("a test"), ready);
  if (!ready.ok()) return;  // the rest REQUIRES it

  std::mt19937_64 rng(static_cast<uint64_t>(n));
  const Eigen::VectorXd v = RandomVector(n, rng);
  ExpectSameBits(actual.Multiply(v), expected.Multiply(v), "F v");
  Eigen::VectorXd actual_entries(n * expected.EntriesPerRow());
  Eigen::VectorXd expected_entries(n * expected.EntriesPerRow());
  actual.CopyEntries(0, n, actual_entries.data());
  expected.CopyEntries(0, n, expected_entries.data());
  ExpectSameBits(actual_entries, expected_entries, "entries of F");
  for (const bool with_eigenvalues : {false, true}) {
    const absl::StatusOr<FisherSummary> a = actual.Summarize(with_eigenvalues);
    const absl::StatusOr<FisherSummary> e = expected.Summarize(with_eigenvalues);
    ASSERT_EQ(a.status(), e.status());
    if (!e.ok()) continue;
    EXPECT_EQ(a->dim, e->dim);
    ExpectSameBits(a->trace, e->trace, "trace");
    ExpectSameBits(a->frobenius_norm, e->frobenius_norm, "frobenius_norm");
    EXPECT_EQ(a->has_eigenvalues, e->has_eigenvalues);
    ExpectSameBits(a->min_eigenvalue, e->min_eigenvalue, "min_eigenvalue");
    ExpectSameBits(a->max_eigenvalue, e->max_eigenvalue, "max_eigenvalue");
    ExpectSameBits(a->condition_number, e->condition_number, "condition_number");
  }
}

void ExpectSameSummary(const SolverSummary& actual, const SolverSummary& expected,
                       bool compare_cached) {
  SCOPED_TRACE(expected.block);
  EXPECT_EQ(actual.method, expected.method);
  ExpectSameBits(actual.residual, expected.residual, "residual");
  ExpectSameBits(actual.damping, expected.damping, "damping");
  EXPECT_EQ(actual.kronecker_damping, expected.kronecker_damping);
  EXPECT_EQ(actual.factor_age_steps, expected.factor_age_steps);
  if (compare_cached) {
    EXPECT_EQ(actual.factorization_cached, expected.factorization_cached);
  }
  EXPECT_EQ(actual.block, expected.block);
  ASSERT_EQ(actual.blocks.size(), expected.blocks.size());
  for (size_t i = 0; i < expected.blocks.size(); ++i) {
    ExpectSameSummary(actual.blocks[i], expected.blocks[i], compare_cached);
  }
}

std::vector<FactorRefresh> Take(ScoreStatistics& statistics) {
  std::vector<FactorRefresh> refreshes;
  statistics.TakeRefreshes(&refreshes);
  return refreshes;
}

void ExpectSameRefreshes(const std::vector<FactorRefresh>& actual,
                         const std::vector<FactorRefresh>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_EQ(actual[k].block, expected[k].block) << k;
    EXPECT_EQ(actual[k].factor, expected[k].factor) << k;
  }
}

// Solves with both and compares everything the solve returns, and the refreshes it
// made. compare_cached: also whether the factorization was reused (only where no cache
// outside the state, a Cholesky factor, is involved).
void ExpectSameSolve(ScoreStatistics& actual, ScoreStatistics& expected, const Eigen::VectorXd& g,
                     double damping, bool compare_cached) {
  SCOPED_TRACE(absl::StrCat("solve with damping ", damping));
  const absl::StatusOr<SolveResult> e = expected.Solve(g, damping);
  const absl::StatusOr<SolveResult> a = actual.Solve(g, damping);
  ExpectSameRefreshes(Take(actual), Take(expected));
  ASSERT_EQ(a.status(), e.status());
  if (!e.ok()) return;
  ExpectSameBits(a->natural_gradient, e->natural_gradient, "natural gradient");
  ASSERT_EQ(a->curvature.has_value(), e->curvature.has_value());
  if (e->curvature.has_value()) ExpectSameBits(*a->curvature, *e->curvature, "curvature");
  ExpectSameSummary(a->summary, e->summary, compare_cached);
}

using Factory = std::function<std::unique_ptr<ScoreStatistics>()>;

// Saves `original`, restores a fresh statistics from the snapshot and checks that it
// answers as the original does and saves to the same snapshot.
std::unique_ptr<ScoreStatistics> RoundTrip(ScoreStatistics& original, const Factory& make) {
  Take(original);  // events are not state: the session logs them, not the snapshot
  const Snapshot snapshot = Save(original);
  ExpectSameSnapshot(Save(original), snapshot);  // saving changes nothing
  std::unique_ptr<ScoreStatistics> restored = make();
  const absl::Status status = Restore(snapshot, *restored);
  EXPECT_TRUE(status.ok()) << status;
  ExpectSameSnapshot(Save(*restored), snapshot);
  ExpectSameAnswers(*restored, original);
  return restored;
}

// --- batches ---

ScoreBatchView View(const RowMatrixF& rows, const std::vector<float>& weights) {
  ScoreBatchView view;
  view.rows = rows.rows();
  view.dim = rows.cols();
  view.scores = rows.data();
  view.weights = weights.empty() ? nullptr : weights.data();
  return view;
}

PreparedBatch SessionBatch(int64_t rows, int64_t dim, Representation representation,
                           std::mt19937_64& rng, DenseKernel kernel = DenseKernel::kFloat64) {
  const RowMatrixF scores = RandomRows(rows, dim, rng);
  const std::vector<float> weights = RandomWeights(rows, rng);
  return PrepareBatch(View(scores, weights), representation, kernel);
}

PreparedBatch BlockBatch(const BlockOptions& block, int64_t index, Factor factor, int64_t rows,
                         std::mt19937_64& rng, DenseKernel kernel = DenseKernel::kFloat64) {
  const RowMatrixF scores = RandomRows(rows, block.RowWidth(factor), rng);
  const std::vector<float> weights = RandomWeights(rows, rng);
  return PrepareBlockBatch(View(scores, weights), block, index, factor, kernel);
}

void AddToBoth(ScoreStatistics& a, ScoreStatistics& b, const PreparedBatch& batch) {
  a.Add(batch);
  b.Add(batch);
}

void DecayBoth(ScoreStatistics& a, ScoreStatistics& b, double rho, int times = 1) {
  for (int k = 0; k < times; ++k) {
    a.Decay(rho);
    b.Decay(rho);
  }
}

void StepBoth(ScoreStatistics& a, ScoreStatistics& b) {
  a.StepTaken();
  b.StepTaken();
}

BlockOptions LowRank(const std::string& name, int64_t dim, int64_t max_rows) {
  BlockOptions block = Block(name, BlockKind::kLowRank, dim);
  block.max_rows = max_rows;
  return block;
}

SessionOptions Layered(std::vector<BlockOptions> blocks, int64_t refresh_period,
                       KroneckerDamping damping = KroneckerDamping::kExact) {
  SessionOptions options;
  options.blocks = std::move(blocks);
  options.dim = *LayeredDim(options.blocks);
  options.factor_refresh_period = refresh_period;
  options.kronecker_damping = damping;
  return options;
}

// --- dense ---

// The low-rank start: rows held (in the scope low_rank_start), restored, then the same
// Adds take both to the same materialization at the same batch.
TEST(StateRoundTripTest, DenseInLowRankStart) {
  for (const bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    SessionOptions options;
    options.dim = 48;  // holds up to 3 rows
    options.centered = centered;
    const Factory make = [&] { return ScoreStatistics::Create(options); };
    std::mt19937_64 rng(centered ? 1 : 2);
    const Eigen::VectorXd g = RandomVector(options.dim, rng);
    std::unique_ptr<ScoreStatistics> original = make();
    original->Add(SessionBatch(2, 48, Representation::kDense, rng));
    original->Decay(0.9);

    const Snapshot snapshot = Save(*original);
    EXPECT_TRUE(Has(snapshot, "low_rank_start/rows"));
    EXPECT_FALSE(Has(snapshot, "raw_second_moment"));
    std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);
    ExpectSameSolve(*restored, *original, g, 0.1, /*compare_cached=*/false);
    ExpectSameSolve(*restored, *original, g, 0.0, false);  // refused alike

    // One more row fills the start exactly; a second restore from there.
    AddToBoth(*original, *restored, SessionBatch(1, 48, Representation::kDense, rng));
    ExpectSameAnswers(*restored, *original);
    std::unique_ptr<ScoreStatistics> full = RoundTrip(*original, make);
    DecayBoth(*original, *restored, 0.8);
    full->Decay(0.8);

    // The next batch materializes M in all three.
    const PreparedBatch batch = SessionBatch(4, 48, Representation::kDense, rng);
    AddToBoth(*original, *restored, batch);
    full->Add(batch);
    EXPECT_TRUE(Has(Save(*original), "raw_second_moment"));
    for (ScoreStatistics* copy : {restored.get(), full.get()}) {
      ExpectSameAnswers(*copy, *original);
      ExpectSameSnapshot(Save(*copy), Save(*original));
      ExpectSameSolve(*copy, *original, g, 0.1, false);
    }
  }
}

// The dense layout is what snapshots on disk hold (it predates the split into a start and
// a matrix class): the same names in the same order in both phases, or older snapshots
// stop loading. In the start, the saved W is that of its rows (|b|^2, what weight_sum()
// reports without decay, to the bit).
TEST(StateRoundTripTest, DenseLayoutIsTheSnapshotFormat) {
  SessionOptions options;
  options.dim = 32;  // holds up to 2 rows
  std::unique_ptr<ScoreStatistics> dense = ScoreStatistics::Create(options);
  std::mt19937_64 rng(3);
  dense->Add(SessionBatch(2, 32, Representation::kDense, rng));
  const auto names = [](const Snapshot& snapshot) {
    std::vector<std::string> out;
    for (const MemoryStateVisitor::Entry& entry : snapshot) out.push_back(entry.name);
    return out;
  };
  Snapshot start = Save(*dense);
  const std::vector<std::string> start_names = names(start);
  ASSERT_GE(start_names.size(), 6u);
  EXPECT_EQ(std::vector<std::string>(start_names.begin(), start_names.begin() + 5),
            (std::vector<std::string>{"sample_count", "weight_sum", "log_scale", "mean_sum",
                                      "holding_rows"}));
  EXPECT_EQ(start_names[5].rfind("low_rank_start/", 0), 0u) << start_names[5];
  EXPECT_EQ(Find(start, "holding_rows")->integer, 1);
  EXPECT_EQ(Find(start, "weight_sum")->values[0], dense->weight_sum());
  EXPECT_EQ(Find(start, "sample_count")->count, 2u);

  dense->Add(SessionBatch(1, 32, Representation::kDense, rng));  // past the start
  Snapshot matrix = Save(*dense);
  EXPECT_EQ(names(matrix),
            (std::vector<std::string>{"sample_count", "weight_sum", "log_scale", "mean_sum",
                                      "holding_rows", "raw_second_moment"}));
  EXPECT_EQ(Find(matrix, "holding_rows")->integer, 0);
  EXPECT_EQ(Find(matrix, "weight_sum")->values[0], dense->weight_sum());
}

// Materialized, centered, float32 and float64 products, decayed past the fold bound:
// the restored statistics folds at the same Add and stays identical.
TEST(StateRoundTripTest, DenseMaterializedAndDecayed) {
  for (const int64_t dim : {8, 40}) {  // 8: no low-rank start at all
    SCOPED_TRACE(absl::StrCat("dim ", dim));
    SessionOptions options;
    options.dim = dim;
    options.centered = true;
    options.float32_products = true;
    const Factory make = [&] { return ScoreStatistics::Create(options); };
    std::mt19937_64 rng(static_cast<uint64_t>(dim));
    const Eigen::VectorXd g = RandomVector(dim, rng);
    std::unique_ptr<ScoreStatistics> original = make();
    original->Add(SessionBatch(30, dim, Representation::kDense, rng, DenseKernel::kFloat32));
    original->Add(SessionBatch(20, dim, Representation::kDense, rng, DenseKernel::kFloat64));
    ASSERT_TRUE(original->Solve(g, 0.01).ok());          // the original has a cached factor
    for (int k = 0; k < 600; ++k) original->Decay(0.5);  // 0.5^600 ~ 1e-181: folds next

    std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);
    ExpectSameSolve(*restored, *original, g, 0.01, /*compare_cached=*/false);
    ExpectSameSolve(*restored, *original, g, 0.0, false);
    AddToBoth(*original, *restored,
              SessionBatch(40, dim, Representation::kDense, rng, DenseKernel::kFloat32));
    ExpectSameAnswers(*restored, *original);
    // A batch of weight 0 neither folds nor moves F.
    RowMatrixF zeros_rows = RandomRows(3, dim, rng);
    const std::vector<float> zero_weights(3, 0.0f);
    AddToBoth(*original, *restored,
              PrepareBatch(View(zeros_rows, zero_weights), Representation::kDense));
    DecayBoth(*original, *restored, 0.95, 3);
    ExpectSameAnswers(*restored, *original);
    ExpectSameSolve(*restored, *original, g, 0.01, false);
    ExpectSameSnapshot(Save(*restored), Save(*original));
  }
}

// --- diagonal ---

TEST(StateRoundTripTest, Diagonal) {
  SessionOptions options;
  options.dim = 9;
  options.representation = Representation::kDiagonal;
  options.centered = true;
  const Factory make = [&] { return ScoreStatistics::Create(options); };
  std::mt19937_64 rng(3);
  const Eigen::VectorXd g = RandomVector(9, rng);
  std::unique_ptr<ScoreStatistics> original = make();
  std::unique_ptr<ScoreStatistics> empty = RoundTrip(*original, make);  // no rows yet
  original->Add(SessionBatch(12, 9, Representation::kDiagonal, rng));
  for (int k = 0; k < 800; ++k) original->Decay(0.5);

  std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);
  ExpectSameSolve(*restored, *original, g, 0.0, /*compare_cached=*/true);
  AddToBoth(*original, *restored, SessionBatch(5, 9, Representation::kDiagonal, rng));  // folds
  DecayBoth(*original, *restored, 0.9);
  ExpectSameAnswers(*restored, *original);
  ExpectSameSolve(*restored, *original, g, 0.1, true);
  ExpectSameSnapshot(Save(*restored), Save(*original));
}

// --- low-rank window ---

// The window in ring order: restored mid-wrap, later rows overwrite the same slots.
TEST(StateRoundTripTest, LowRankWindowWrapsAround) {
  for (const bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    const BlockOptions block = LowRank("embedding", 7, 5);
    SessionOptions session;
    session.centered = centered;
    const Factory make = [&] { return std::make_unique<LowRankStatistics>(block, session); };
    std::mt19937_64 rng(centered ? 4 : 5);
    const Eigen::VectorXd g = RandomVector(7, rng);
    std::unique_ptr<ScoreStatistics> original = make();
    original->Add(BlockBatch(block, 0, Factor::kNone, 3, rng));

    // Not yet full: the write position is the end of the rows.
    std::unique_ptr<ScoreStatistics> partial = RoundTrip(*original, make);
    PreparedBatch batch = BlockBatch(block, 0, Factor::kNone, 4, rng);  // wraps: next at 2
    AddToBoth(*original, *partial, batch);
    ExpectSameAnswers(*partial, *original);

    Snapshot snapshot = Save(*original);
    EXPECT_EQ(Find(snapshot, "row_count")->integer, 5);
    EXPECT_EQ(Find(snapshot, "next_row")->integer, 2);
    std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);
    ExpectSameSolve(*restored, *original, g, 0.1, /*compare_cached=*/false);

    // Two rows evict slots 2 and 3 (the oldest), then a batch longer than the window.
    AddToBoth(*original, *restored, BlockBatch(block, 0, Factor::kNone, 2, rng));
    ExpectSameAnswers(*restored, *original);
    ExpectSameSolve(*restored, *original, g, 0.1, false);
    AddToBoth(*original, *restored, BlockBatch(block, 0, Factor::kNone, 8, rng));
    ExpectSameAnswers(*restored, *original);
    // Decayed past the fold bound, restored again, then a batch that folds.
    DecayBoth(*original, *restored, 0.5, 700);
    std::unique_ptr<ScoreStatistics> decayed = RoundTrip(*original, make);
    batch = BlockBatch(block, 0, Factor::kNone, 1, rng);
    AddToBoth(*original, *restored, batch);
    decayed->Add(batch);
    for (ScoreStatistics* copy : {restored.get(), decayed.get()}) {
      ExpectSameAnswers(*copy, *original);
      ExpectSameSolve(*copy, *original, g, 0.2, false);
      ExpectSameSnapshot(Save(*copy), Save(*original));
    }
  }
}

// --- Kronecker ---

// Factors in and past their own low-rank start (A has 34 rows: it holds up to 2),
// period 3, so whether a solve refreshes depends on the restored clock.
TEST(StateRoundTripTest, KroneckerKeepsRefreshClock) {
  for (const KroneckerDamping damping : {KroneckerDamping::kExact, KroneckerDamping::kFactored}) {
    SCOPED_TRACE(KroneckerDampingName(damping));
    const BlockOptions block = Kronecker("fc", 33, 4, /*bias=*/true);
    const SessionOptions session = Layered({block}, /*refresh_period=*/3, damping);
    const Factory make = [&] { return std::make_unique<KroneckerStatistics>(block, session); };
    std::mt19937_64 rng(6);
    const Eigen::VectorXd g = RandomVector(block.ParameterCount(), rng);
    std::unique_ptr<ScoreStatistics> original = make();
    original->Add(BlockBatch(block, 0, Factor::kActivations, 1, rng));  // A holds a row
    original->Add(BlockBatch(block, 0, Factor::kOutputGradients, 10, rng));
    std::unique_ptr<ScoreStatistics> undecomposed = RoundTrip(*original, make);
    ExpectSameSolve(*undecomposed, *original, g, 0.1, /*compare_cached=*/true);

    original->StepTaken();
    original->Add(BlockBatch(block, 0, Factor::kActivations, 5, rng));  // A materializes
    ASSERT_TRUE(original->Solve(g, 0.1).ok());                          // stale A, age 1
    original->StepTaken();
    original->Decay(0.9);

    std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);
    // Steps 2 to 5: A refreshes at step 3 (3 steps after step 0), G (changed at step 4)
    // at step 5.
    for (int step = 2; step < 6; ++step) {
      SCOPED_TRACE(absl::StrCat("step ", step));
      ExpectSameSolve(*restored, *original, g, 0.1, true);
      ExpectSameSolve(*restored, *original, g, 0.1, true);  // a second solve in one step
      StepBoth(*original, *restored);
      DecayBoth(*original, *restored, 0.9);
      AddToBoth(*original, *restored, BlockBatch(block, 0, Factor::kActivations, 2, rng));
      if (step == 4) {
        AddToBoth(*original, *restored, BlockBatch(block, 0, Factor::kOutputGradients, 3, rng));
      }
      ExpectSameAnswers(*restored, *original);
    }
    ExpectSameSnapshot(Save(*restored), Save(*original));
  }
}

// A refresh whose eigensolve is pending (replayed, not yet solved) is saved as the copy.
TEST(StateRoundTripTest, KroneckerWithPendingRefresh) {
  const BlockOptions block = Kronecker("fc", 5, 4, /*bias=*/false);
  const SessionOptions session = Layered({block}, /*refresh_period=*/2);
  const Factory make = [&] { return std::make_unique<KroneckerStatistics>(block, session); };
  std::mt19937_64 rng(7);
  const Eigen::VectorXd g = RandomVector(block.ParameterCount(), rng);
  std::unique_ptr<ScoreStatistics> original = make();
  original->Add(BlockBatch(block, 0, Factor::kActivations, 20, rng));
  original->Add(BlockBatch(block, 0, Factor::kOutputGradients, 17, rng));
  ASSERT_TRUE(original->Solve(g, 0.05).ok());
  EXPECT_EQ(Take(*original).size(), 2u);  // both factors, first decomposed
  original->StepTaken();
  original->Add(BlockBatch(block, 0, Factor::kActivations, 6, rng));
  ASSERT_TRUE(original->ReplayRefresh({-1, Factor::kActivations}).ok());
  EXPECT_TRUE(Take(*original).empty());  // a replayed refresh is no new event

  Snapshot snapshot = Save(*original);
  EXPECT_EQ(Find(snapshot, "activations/eigensolve_pending")->integer, 1);
  EXPECT_TRUE(Has(snapshot, "activations/decomposition_input"));
  EXPECT_FALSE(Has(snapshot, "activations/eigenvalues"));
  EXPECT_TRUE(Has(snapshot, "output_gradients/eigenvalues"));
  std::unique_ptr<ScoreStatistics> restored = RoundTrip(*original, make);

  const absl::StatusOr<SolveResult> first = original->Solve(g, 0.05);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->summary.factorization_cached);  // the pending eigensolve ran
  EXPECT_EQ(first->summary.factor_age_steps, 0);
  EXPECT_TRUE(Take(*original).empty());  // and refreshed nothing
  const absl::StatusOr<SolveResult> again = restored->Solve(g, 0.05);
  ASSERT_TRUE(again.ok());
  ExpectSameBits(again->natural_gradient, first->natural_gradient, "natural gradient");
  EXPECT_FALSE(again->summary.factorization_cached);
  ExpectSameSolve(*restored, *original, g, 0.05, /*compare_cached=*/true);
  ExpectSameSnapshot(Save(*restored), Save(*original));
}

// --- layered ---

SessionOptions MixedLayout(int64_t refresh_period) {
  return Layered({Kronecker("fc", 4, 3, /*bias=*/true), Block("dense", BlockKind::kDense, 40),
                  Block("norm", BlockKind::kDiagonal, 5), LowRank("embedding", 7, 3)},
                 refresh_period);
}

// One step's batches for every block of MixedLayout, varied by `step`.
std::vector<PreparedBatch> MixedBatches(const SessionOptions& options, int step,
                                        std::mt19937_64& rng) {
  const std::vector<BlockOptions>& blocks = options.blocks;
  std::vector<PreparedBatch> batches;
  batches.push_back(BlockBatch(blocks[0], 0, Factor::kActivations, 3 + step % 2, rng));
  if (step % 3 != 1) {
    batches.push_back(BlockBatch(blocks[0], 0, Factor::kOutputGradients, 2, rng));
  }
  batches.push_back(BlockBatch(blocks[1], 1, Factor::kNone, 1, rng));  // dense at step 2
  batches.push_back(BlockBatch(blocks[2], 2, Factor::kNone, 2, rng));
  batches.push_back(BlockBatch(blocks[3], 3, Factor::kNone, 2, rng));
  return batches;
}

TEST(StateRoundTripTest, LayeredWithMixedBlocks) {
  const SessionOptions options = MixedLayout(/*refresh_period=*/2);
  const Factory make = [&] { return ScoreStatistics::Create(options); };
  std::mt19937_64 rng(8);
  const Eigen::VectorXd g = RandomVector(options.dim, rng);
  std::unique_ptr<ScoreStatistics> original = make();
  std::unique_ptr<ScoreStatistics> restored;
  for (int step = 0; step < 8; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    if (step == 1 || step == 4) {
      restored = RoundTrip(*original, make);
      EXPECT_EQ(Has(Save(*original), "dense/low_rank_start/rows"), step == 1);
    }
    for (const PreparedBatch& batch : MixedBatches(options, step, rng)) {
      original->Add(batch);
      if (restored != nullptr) restored->Add(batch);
    }
    if (restored == nullptr) {
      ASSERT_TRUE(original->Solve(g, 0.1).ok());
    } else {
      ExpectSameAnswers(*restored, *original);
      ExpectSameSolve(*restored, *original, g, 0.1, /*compare_cached=*/false);
      restored->StepTaken();
      restored->Decay(0.9);
    }
    original->StepTaken();
    original->Decay(0.9);
  }
  ExpectSameSnapshot(Save(*restored), Save(*original));
}

// --- replay ---

// A session that solved at every step against one that only replayed the refreshes
// those solves made: the next solve of each is the same.
TEST(StateReplayTest, ReplayedRefreshesMatchSolvedOnes) {
  const BlockOptions block = Kronecker("fc", 5, 4, /*bias=*/true);
  const SessionOptions session = Layered({block}, /*refresh_period=*/2);
  KroneckerStatistics solved(block, session), replayed(block, session);
  std::mt19937_64 rng(9);
  const Eigen::VectorXd g = RandomVector(block.ParameterCount(), rng);
  int refreshes = 0, quiet_steps = 0;
  for (int step = 0; step < 9; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    AddToBoth(solved, replayed, BlockBatch(block, 0, Factor::kActivations, 4, rng));
    if (step % 4 != 3) {
      AddToBoth(solved, replayed, BlockBatch(block, 0, Factor::kOutputGradients, 3, rng));
    }
    ASSERT_TRUE(solved.Solve(g, 0.1).ok());
    const std::vector<FactorRefresh> events = Take(solved);
    for (const FactorRefresh& event : events) {
      EXPECT_EQ(event.block, -1);
      ASSERT_TRUE(replayed.ReplayRefresh(event).ok());
    }
    EXPECT_TRUE(Take(replayed).empty());
    refreshes += static_cast<int>(events.size());
    quiet_steps += events.empty() ? 1 : 0;
    StepBoth(solved, replayed);
    DecayBoth(solved, replayed, 0.9);
  }
  // Not trivial: both factors refreshed, and some steps used stale decompositions.
  EXPECT_GE(refreshes, 4);
  EXPECT_GE(quiet_steps, 2);
  AddToBoth(solved, replayed, BlockBatch(block, 0, Factor::kActivations, 4, rng));
  const absl::StatusOr<SolveResult> expected = solved.Solve(g, 0.1);
  const absl::StatusOr<SolveResult> actual = replayed.Solve(g, 0.1);
  ASSERT_TRUE(expected.ok() && actual.ok());
  ExpectSameBits(actual->natural_gradient, expected->natural_gradient, "natural gradient");
  ExpectSameBits(*actual->curvature, *expected->curvature, "curvature");
  EXPECT_EQ(actual->summary.factor_age_steps, expected->summary.factor_age_steps);
  EXPECT_GT(expected->summary.factor_age_steps, 0);  // A changed since its refresh
  ExpectSameRefreshes(Take(replayed), Take(solved));
  // From here on they are the same statistics.
  ExpectSameSolve(replayed, solved, g, 0.3, /*compare_cached=*/true);
}

// Layered: events carry the block index; a solve that fails in a later block still
// leaves the refreshes an earlier block made, and replaying them keeps the two equal.
TEST(StateReplayTest, LayeredReplayIncludingFailedSolve) {
  const SessionOptions options = MixedLayout(/*refresh_period=*/2);
  std::unique_ptr<ScoreStatistics> solved = ScoreStatistics::Create(options);
  std::unique_ptr<ScoreStatistics> replayed = ScoreStatistics::Create(options);
  std::mt19937_64 rng(10);
  const Eigen::VectorXd g = RandomVector(options.dim, rng);
  bool failed_with_refresh = false;
  for (int step = 0; step < 8; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    for (const PreparedBatch& batch : MixedBatches(options, step, rng)) {
      AddToBoth(*solved, *replayed, batch);
    }
    // At step 4 a first attempt without damping fails in the dense block, after the
    // Kronecker block (index 0) refreshed; the step is retried with damping.
    for (const double damping :
         step == 4 ? std::vector<double>{0.0, 0.1} : std::vector<double>{0.1}) {
      const absl::StatusOr<SolveResult> result = solved->Solve(g, damping);
      const std::vector<FactorRefresh> events = Take(*solved);
      for (const FactorRefresh& event : events) {
        EXPECT_EQ(event.block, 0);
        ASSERT_TRUE(replayed->ReplayRefresh(event).ok());
      }
      if (damping == 0.0) {
        EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
        EXPECT_THAT(result.status().message(), HasSubstr("\"dense\""));
        failed_with_refresh = !events.empty();
      } else {
        ASSERT_TRUE(result.ok()) << result.status();
      }
    }
    StepBoth(*solved, *replayed);
    DecayBoth(*solved, *replayed, 0.9);
  }
  EXPECT_TRUE(failed_with_refresh);
  ExpectSameSolve(*replayed, *solved, g, 0.1, /*compare_cached=*/false);
  ExpectSameSolve(*replayed, *solved, g, 0.2, false);
  ExpectSameSnapshot(Save(*replayed), Save(*solved));
}

TEST(StateReplayTest, RefusesRefreshesWithoutSuchFactor) {
  const SessionOptions options = MixedLayout(/*refresh_period=*/1);
  std::unique_ptr<ScoreStatistics> layered = ScoreStatistics::Create(options);
  for (const int64_t block : {-1, 4}) {
    const absl::Status status = layered->ReplayRefresh({block, Factor::kActivations});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("block ", block)));
  }
  absl::Status status = layered->ReplayRefresh({2, Factor::kNone});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("block 2"));
  EXPECT_THAT(status.message(), HasSubstr("\"norm\""));
  status = layered->ReplayRefresh({0, Factor::kNone});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("unspecified"));
  // A factor without weight: no solve could have refreshed it.
  status = layered->ReplayRefresh({0, Factor::kOutputGradients});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("output_gradients"));

  SessionOptions dense_options;
  dense_options.dim = 4;
  status = ScoreStatistics::Create(dense_options)->ReplayRefresh({-1, Factor::kActivations});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("no Kronecker factor"));
}

// --- snapshots that do not fit ---

TEST(StateMismatchTest, DifferentDimFailsNamingTheValue) {
  std::mt19937_64 rng(11);
  SessionOptions options;
  options.dim = 5;
  options.representation = Representation::kDiagonal;
  std::unique_ptr<ScoreStatistics> five = ScoreStatistics::Create(options);
  five->Add(SessionBatch(3, 5, Representation::kDiagonal, rng));
  options.dim = 6;
  absl::Status status = Restore(Save(*five), *ScoreStatistics::Create(options));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("squares_sum has size 5"));
  EXPECT_THAT(status.message(), HasSubstr("require 6"));

  // Dense in its start, into a dense of another dim that also has one.
  SessionOptions dense;
  dense.dim = 48;
  std::unique_ptr<ScoreStatistics> small = ScoreStatistics::Create(dense);
  small->Add(SessionBatch(2, 48, Representation::kDense, rng));
  const Snapshot snapshot = Save(*small);
  dense.dim = 64;
  status = Restore(snapshot, *ScoreStatistics::Create(dense));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("mean_sum"));
  // Its rows alone, into a start of another dim (the window's own check).
  Snapshot rows_only = snapshot;
  Find(rows_only, "mean_sum")->values.resize(64, 0.0);
  Find(rows_only, "mean_sum")->rows = 64;
  status = Restore(rows_only, *ScoreStatistics::Create(dense));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("rows (columns) has size 48"));
}

TEST(StateMismatchTest, CorruptWindowPositionFails) {
  const BlockOptions block = LowRank("embedding", 7, 5);
  const SessionOptions session;
  std::mt19937_64 rng(12);
  LowRankStatistics original(block, session);
  original.Add(BlockBatch(block, 0, Factor::kNone, 3, rng));
  const Snapshot snapshot = Save(original);
  struct Corruption {
    const char* name;
    int64_t value;
  };
  for (const Corruption corruption :
       {Corruption{"next_row", 5}, Corruption{"next_row", -1}, Corruption{"next_row", 1},
        Corruption{"row_count", 6}, Corruption{"row_count", -2}}) {
    SCOPED_TRACE(absl::StrCat(corruption.name, " = ", corruption.value));
    Snapshot corrupt = snapshot;
    Find(corrupt, corruption.name)->integer = corruption.value;
    LowRankStatistics restored(block, session);
    const absl::Status status = Restore(corrupt, restored);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(corruption.name, " ", corruption.value)));
  }
  // More rows held than ever added.
  Snapshot corrupt = snapshot;
  Find(corrupt, "sample_count")->count = 2;
  LowRankStatistics restored(block, session);
  EXPECT_THAT(Restore(corrupt, restored).message(), HasSubstr("sample_count 2"));
}

TEST(StateMismatchTest, InconsistentDenseAndKroneckerStateFails) {
  std::mt19937_64 rng(13);
  // A start held where dim / 16 is 0.
  SessionOptions small;
  small.dim = 8;
  std::unique_ptr<ScoreStatistics> dense = ScoreStatistics::Create(small);
  dense->Add(SessionBatch(2, 8, Representation::kDense, rng));
  Snapshot corrupt = Save(*dense);
  Find(corrupt, "holding_rows")->integer = 1;
  absl::Status status = Restore(corrupt, *ScoreStatistics::Create(small));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("no low-rank start"));

  // A start whose decay factor is not the statistics'.
  SessionOptions large;
  large.dim = 32;
  dense = ScoreStatistics::Create(large);
  dense->Add(SessionBatch(1, 32, Representation::kDense, rng));
  dense->Decay(0.5);
  corrupt = Save(*dense);
  Find(corrupt, "low_rank_start/log_scale")->values[0] = 0.0;
  status = Restore(corrupt, *ScoreStatistics::Create(large));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("log_scale"));

  // A decomposition from a step after the block's clock, and a pending eigensolve of
  // nothing.
  const BlockOptions block = Kronecker("fc", 3, 2, /*bias=*/false);
  const SessionOptions session = Layered({block}, 2);
  KroneckerStatistics kronecker(block, session);
  kronecker.Add(BlockBatch(block, 0, Factor::kActivations, 5, rng));
  kronecker.Add(BlockBatch(block, 0, Factor::kOutputGradients, 5, rng));
  ASSERT_TRUE(kronecker.Solve(Eigen::VectorXd::Ones(6), 0.1).ok());
  const Snapshot snapshot = Save(kronecker);
  corrupt = snapshot;
  Find(corrupt, "output_gradients/decomposed_step")->integer = 1;
  KroneckerStatistics restored(block, session);
  status = Restore(corrupt, restored);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("output_gradients"));
  EXPECT_THAT(status.message(), HasSubstr("step 1 (of 0)"));
  corrupt = snapshot;
  Find(corrupt, "step_count")->integer = -1;
  KroneckerStatistics negative(block, session);
  EXPECT_EQ(Restore(corrupt, negative).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace fisherd

namespace fisherd {
namespace {

// A step whose log record cannot be written (a full data directory) must leave nothing
// in memory that a crash would not bring back: the session that failed to log and a
// replica rebuilt from what was logged answer the next step identically. Steps 0-2 are
// logged (a refresh at 0, none at 1 and 2 with period 3); step 3 refreshes both factors
// and its record fails. Without ForgetRefresh the live session would keep that refresh
// (taken at step 3's data, age 0) while the replica still has step 0's decomposition
// and refreshes at the next step with newer data: the natural gradients would differ.
TEST(StateReplayTest, StepWhoseLogFailsLeavesNoUnloggedRefresh) {
  const BlockOptions block = Kronecker("fc", 5, 4, /*bias=*/true);
  SessionOptions options = Layered({block}, /*refresh_period=*/3);
  options.decay = 0.9;
  Session live(options), replica(options);
  std::mt19937_64 rng(21);
  const Eigen::VectorXd g = RandomVector(options.dim, rng);
  StepOptions step;
  step.damping = 0.1;
  uint64_t lsn = 0, sequence = 0;
  std::vector<StepEffect> logged;
  bool fail_next = false;
  const LogStepFn log = [&](const StepEffect& effect) -> absl::StatusOr<uint64_t> {
    if (fail_next) return absl::ResourceExhaustedError("data directory full");
    logged.push_back(effect);
    return ++lsn;
  };
  for (int i = 0; i <= 4; ++i) {
    SCOPED_TRACE(absl::StrCat("step ", i));
    for (Factor factor : {Factor::kActivations, Factor::kOutputGradients}) {
      const PreparedBatch batch = BlockBatch(block, 0, factor, 3, rng);
      ++sequence;
      live.AddScores("w", sequence, batch);
      ASSERT_TRUE(replica.ReplayBatch("w", sequence, batch, ++lsn).ok());
    }
    if (i == 4) break;  // the step compared below
    fail_next = i == 3;
    logged.clear();
    absl::StatusOr<StepResult> result = live.Step(g, step, log);
    if (fail_next) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
      continue;
    }
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(logged.size(), 1u);
    EXPECT_EQ(logged[0].refreshes.size(), i == 0 ? 2u : 0u);
    ASSERT_TRUE(replica.ReplayStep(logged[0], lsn).ok());
  }
  fail_next = false;
  logged.clear();
  absl::StatusOr<StepResult> a = live.Step(g, step, log);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_EQ(logged[0].refreshes.size(), 2u);  // the forgotten refreshes, made again
  absl::StatusOr<StepResult> b = replica.Step(g, step);
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSameBits(b->natural_gradient, a->natural_gradient, "natural gradient");
  EXPECT_EQ(b->solver.factor_age_steps, a->solver.factor_age_steps);
}

}  // namespace
}  // namespace fisherd
