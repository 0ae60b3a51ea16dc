#include "bench/soak_worker.h"

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/soak_process.h"
#include "client/grpc_status.h"
#include "client/session_name.h"

namespace fisherd::soak {
namespace v1 = ::fisherd::v1;
using absl::StatusCode;

namespace {

std::chrono::system_clock::time_point In(std::chrono::microseconds d) {
  return std::chrono::system_clock::now() + d;
}

}  // namespace

Worker::Worker(int index, const SoakEnv& env, uint64_t seed)
    : index_(index),
      env_(env),
      client_(env.clients[static_cast<size_t>(index) % env.clients.size()]),
      rng_(seed),
      home_(env.checked[static_cast<size_t>(index) % env.checked.size()]) {}

Worker::~Worker() = default;

bool Worker::Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

int Worker::Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

const SessionSpec& Worker::RandomChecked() {
  return env_.checked[static_cast<size_t>(Uniform(0, static_cast<int>(env_.checked.size()) - 1))];
}

std::vector<double> Worker::RandomVector(uint64_t n) {
  std::normal_distribution<double> normal;
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng_);
  return v;
}

// --- The home streamer ---------------------------------------------------------------

absl::Status Worker::EnsureStreamer(int max_retries) {
  if (streamer_ != nullptr) return absl::OkStatus();
  streamer_id_ = absl::StrFormat("w%d-s%d", index_, streamer_generation_++);
  client::ScoreStreamerOptions options;
  options.session = home_.id;
  options.worker_id = streamer_id_;
  options.dim = home_.kind == SessionKind::kLayered ? 0 : home_.dim;
  options.starting_sequence = 1;  // a new id: nothing to resume
  options.rows_per_batch = kRowsPerBatch;
  options.max_in_flight = 4;
  options.max_retries = max_retries;
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> created =
      client::ScoreStreamer::Create(client(), options);
  if (!created.ok()) return created.status();
  streamer_ = *std::move(created);
  return absl::OkStatus();
}

void Worker::RecordStreamerAcks() {
  if (streamer_ != nullptr && streamer_->stats().has_last_ack) {
    env_.ledger->Acked(home_.id, streamer_id_, streamer_->stats().last_ack.sequence());
  }
}

void Worker::DropStreamer() {
  RecordStreamerAcks();
  streamer_.reset();  // cancels the stream; batches in flight may or may not be applied
}

bool Worker::AppendBatches(int batches, const std::string& op, bool draining) {
  if (absl::Status s = EnsureStreamer(draining ? 2 : 4); !s.ok()) {
    if (draining) {
      env_.counts->Record(op, s, {StatusCode::kUnavailable, StatusCode::kCancelled});
    } else {
      env_.counts->Record(op, s);
    }
    return false;
  }
  for (int i = 0; i < batches; ++i) {
    const uint64_t sequence = streamer_->stats().next_sequence;
    const Target t = TargetFor(home_, sequence);
    const Rows rows = MakeRows(streamer_id_, sequence, t.width);
    env_.ledger->Sent(home_.id, streamer_id_, sequence);
    absl::Status s =
        home_.kind == SessionKind::kLayered
            ? streamer_->Append(client::ScoreTarget{t.block, t.factor}, rows.scores, rows.weights)
            : streamer_->Append(rows.scores, rows.weights);
    if (s.ok() && streamer_->stats().next_sequence != sequence + 1) {
      env_.counts->Unexpected(
          op, absl::StrFormat("one Append of %d rows advanced the sequence "
                              "from %d to %d",
                              kRowsPerBatch, sequence, streamer_->stats().next_sequence));
      DropStreamer();
      return false;
    }
    RecordStreamerAcks();
    if (!s.ok()) {
      if (draining) {
        env_.counts->Record(op, s, {StatusCode::kUnavailable, StatusCode::kCancelled});
      } else {
        env_.counts->Record(op, s);
      }
      DropStreamer();
      return false;
    }
  }
  env_.counts->Record(op, absl::OkStatus());
  return true;
}

void Worker::OpStream() {
  if (!AppendBatches(Uniform(1, 6), "stream_append", false)) return;
  if (Chance(0.3)) {
    absl::Status s = streamer_->Flush();
    RecordStreamerAcks();
    env_.counts->Record("stream_flush", s);
    if (!s.ok()) DropStreamer();
  }
}

void Worker::Finish() {
  if (streamer_ == nullptr) return;
  absl::Status s = streamer_->Close();
  RecordStreamerAcks();
  env_.counts->Record("stream_close", s);
  streamer_.reset();
}

void Worker::Abandon() { DropStreamer(); }

void Worker::RunStreamOnly() {
  for (int i = 0; !env_.stop->load(); ++i) {
    if (!AppendBatches(1, "drain_stream", true)) return;
    if (i % 4 == 3) {
      absl::Status s = streamer_->Flush();
      RecordStreamerAcks();
      if (!s.ok()) {
        env_.counts->Record("drain_flush", s, {StatusCode::kUnavailable, StatusCode::kCancelled});
        DropStreamer();
        return;
      }
    }
  }
}

// --- Unary operations on the checked sessions ------------------------------------------

void Worker::OpAddScores() {
  if (unary_id_.empty()) {
    unary_id_ = absl::StrFormat("w%d-u%d", index_, unary_generation_++);
    unary_sequence_ = 0;
  }
  const uint64_t sequence = ++unary_sequence_;
  const v1::ScoreBatch batch = MakeBatch(home_, unary_id_, sequence);
  env_.ledger->Sent(home_.id, unary_id_, sequence);
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {  // resending is safe: deduplicated
    absl::StatusOr<v1::ScoreAck> ack = client()->AddScores(batch);
    if (ack.ok()) {
      env_.ledger->Acked(home_.id, unary_id_, ack->sequence());
      if (ack->duplicate() && attempt == 0) {
        env_.counts->Unexpected("add_scores", absl::StrCat("first send of ", unary_id_, "/",
                                                           sequence, " acked as a duplicate"));
        return;
      }
      env_.counts->Record("add_scores", absl::OkStatus());
      return;
    }
    last = ack.status();
    if (!client::IsTransient(last.code())) break;
  }
  env_.counts->Record("add_scores", last);
  unary_id_.clear();  // its last batch's fate is the server's to say: a new id from now on
}

void Worker::OpStep() {
  const SessionSpec& spec = RandomChecked();
  client::StepParams params;
  params.skip_decay = true;  // decay is 1 anyway; keeps the sums exact
  params.learning_rate = 0.1;
  const std::vector<double> g = RandomVector(spec.dim);
  const bool streamed = Chance(0.3);
  std::string op = "step";
  absl::StatusOr<v1::NaturalGradientStepResponse> r;
  if (streamed) {
    op = "stream_step";
    params.chunk_values = static_cast<uint32_t>(Uniform(16, 100));
    params.float32_gradient = Chance(0.5);
    r = client()->StreamStep(spec.id, g, params);
  } else {
    r = client()->Step(spec.id, g, params);
  }
  // Before any row arrived a step is FAILED_PRECONDITION at most on an empty session;
  // the checked sessions are seeded before the workers start.
  if (r.ok() && static_cast<uint64_t>(r->natural_gradient_size()) != spec.dim) {
    env_.counts->Unexpected(
        op, absl::StrFormat("%d values for dim %d", r->natural_gradient_size(), spec.dim));
    return;
  }
  env_.counts->Record(op, r.status());
}

void Worker::OpFvp() {
  const SessionSpec& spec = RandomChecked();
  absl::StatusOr<v1::FisherVectorProductResponse> r =
      client()->FisherVectorProduct(spec.id, RandomVector(spec.dim));
  if (r.ok() && static_cast<uint64_t>(r->product_size()) != spec.dim) {
    env_.counts->Unexpected("fvp", "wrong product length");
    return;
  }
  env_.counts->Record("fvp", r.status());
}

void Worker::OpGetFisher() {
  const SessionSpec& spec = RandomChecked();
  client::FisherQuery query;
  query.include_eigenvalues = Chance(0.3);
  if (spec.kind == SessionKind::kLayered) {
    const Target t = TargetFor(spec, static_cast<uint64_t>(Uniform(0, 3)));
    if (Chance(0.7)) {
      query.block = t.block;
      query.factor = t.factor;
      query.include_matrix = Chance(0.5);
    }
  } else {
    query.include_matrix = Chance(0.3);
  }
  // Every GetFisher reads one consistent state (docs/design.md): no error is expected,
  // however many rows arrive meanwhile.
  env_.counts->Record("get_fisher", client()->GetFisher(spec.id, query).status());
}

void Worker::OpInspect() {
  if (Chance(0.5)) {
    env_.counts->Record("get_session", client()->GetSession(RandomChecked().id).status());
  } else {
    env_.counts->Record("list_sessions", client()->ListSessions().status());
  }
}

// --- Injected faults ---------------------------------------------------------------------

void Worker::FaultCancelStream() {
  const SessionSpec& spec = RandomChecked();
  const std::string id = absl::StrFormat("w%d-c%d", index_, serial_++);
  grpc::ClientContext context;
  client()->PrepareContext(&context, spec.id);
  auto stream = client()->stub()->StreamScores(&context);
  const int batches = Uniform(1, 6);
  for (int seq = 1; seq <= batches; ++seq) {
    env_.ledger->Sent(spec.id, id, static_cast<uint64_t>(seq));
    if (!stream->Write(MakeBatch(spec, id, static_cast<uint64_t>(seq)))) break;
  }
  v1::ScoreAck ack;
  const int reads = Uniform(0, batches);
  for (int i = 0; i < reads && stream->Read(&ack); ++i) {
    env_.ledger->Acked(spec.id, id, ack.sequence());
  }
  context.TryCancel();
  while (stream->Read(&ack)) env_.ledger->Acked(spec.id, id, ack.sequence());
  const grpc::Status status = stream->Finish();
  env_.counts->Record("fault_cancel_stream", client::FromGrpcStatus(status),
                      {StatusCode::kCancelled});
}

void Worker::FaultDeadline() {
  const std::chrono::microseconds tiny(Uniform(0, 800));
  const SessionSpec& spec = RandomChecked();
  grpc::ClientContext context;
  client()->PrepareContext(&context, spec.id);
  context.set_deadline(In(tiny));
  const std::initializer_list<StatusCode> expected = {StatusCode::kDeadlineExceeded};
  switch (Uniform(0, 3)) {
    case 0: {  // one batch whose fate only the server knows: an id of its own
      const std::string id = absl::StrFormat("w%d-d%d", index_, serial_++);
      env_.ledger->Sent(spec.id, id, 1);
      v1::ScoreAck ack;
      const grpc::Status s = client()->stub()->AddScores(&context, MakeBatch(spec, id, 1), &ack);
      if (s.ok()) env_.ledger->Acked(spec.id, id, ack.sequence());
      env_.counts->Record("deadline_add_scores", client::FromGrpcStatus(s), expected);
      return;
    }
    case 1: {
      v1::NaturalGradientStepRequest request;
      request.set_session(client::SessionName(spec.id));
      for (double x : RandomVector(spec.dim)) request.add_gradient(x);
      request.set_skip_decay(true);
      v1::NaturalGradientStepResponse response;
      const grpc::Status s = client()->stub()->NaturalGradientStep(&context, request, &response);
      env_.counts->Record("deadline_step", client::FromGrpcStatus(s), expected);
      return;
    }
    case 2: {
      v1::GetFisherRequest request;
      request.set_session(client::SessionName(spec.id));
      request.set_include_eigenvalues(true);
      if (spec.kind != SessionKind::kLayered) request.set_include_matrix(true);
      auto reader = client()->stub()->GetFisher(&context, request);
      v1::GetFisherResponse response;
      for (int i = 0; i < 100000 && reader->Read(&response); ++i) {
      }
      env_.counts->Record("deadline_get_fisher", client::FromGrpcStatus(reader->Finish()),
                          {StatusCode::kDeadlineExceeded});
      return;
    }
    default: {  // a score stream that runs into its deadline (a few ms) while streaming
      context.set_deadline(In(std::chrono::microseconds(Uniform(2000, 20000))));
      const std::string id = absl::StrFormat("w%d-e%d", index_, serial_++);
      auto stream = client()->stub()->StreamScores(&context);
      v1::ScoreAck ack;
      for (uint64_t seq = 1; seq <= 200; ++seq) {
        env_.ledger->Sent(spec.id, id, seq);
        if (!stream->Write(MakeBatch(spec, id, seq))) break;
        if (!stream->Read(&ack)) break;
        env_.ledger->Acked(spec.id, id, ack.sequence());
      }
      stream->WritesDone();
      while (stream->Read(&ack)) env_.ledger->Acked(spec.id, id, ack.sequence());
      env_.counts->Record("deadline_stream", client::FromGrpcStatus(stream->Finish()), expected);
      return;
    }
  }
}

void Worker::FaultAbandonStreamer() {
  // Batches written and not waited for; the destructor cancels the stream under them.
  if (!AppendBatches(Uniform(1, 4), "stream_append", false)) return;
  DropStreamer();
  env_.counts->Record("fault_abandon_stream", absl::OkStatus());
}

void Worker::FaultKilledChild() {
  if (env_.self_exe.empty()) return;
  int alive = env_.children->load();
  do {
    if (alive >= env_.max_children) return;
  } while (!env_.children->compare_exchange_weak(alive, alive + 1));
  // Only plain sessions: the child's streamer is given the row width.
  const SessionSpec& spec = env_.checked[static_cast<size_t>(Uniform(0, 1))];
  const std::string id = absl::StrFormat("w%d-k%d", index_, serial_++);
  env_.ledger->Sent(spec.id, id, kUnknownSent);
  const pid_t pid = SpawnQuiet({env_.self_exe, "--child-stream=" + env_.address,
                                "--child-session=" + spec.id, "--child-worker=" + id});
  if (pid < 0) {
    env_.counts->Unexpected("fault_killed_client", "cannot spawn the child");
    --*env_.children;
    return;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(Uniform(150, 700)));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  --*env_.children;
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    env_.counts->Unexpected("fault_killed_client",
                            absl::StrFormat("the child exited with %d", WEXITSTATUS(status)));
    return;
  }
  env_.counts->Record("fault_killed_client", absl::OkStatus());
}

void Worker::Churn() {
  const std::string id = absl::StrFormat("churn-w%d-%d", index_, serial_++);
  const SessionSpec spec = ChurnSession(id);
  const std::string wid = "churn";
  absl::Status created = client()->CreateSession(id, spec.config).status();
  env_.counts->Record("churn_create", created);
  if (!created.ok()) return;
  for (uint64_t seq = 1; seq <= 2; ++seq) {
    env_.counts->Record("churn_add_scores",
                        client()->AddScores(MakeBatch(spec, wid, seq)).status());
  }
  grpc::ClientContext context;
  client()->PrepareContext(&context, id);
  auto stream = client()->stub()->StreamScores(&context);
  v1::ScoreAck ack;
  const bool wrote = stream->Write(MakeBatch(spec, wid, 3)) && stream->Read(&ack);
  if (!wrote) env_.counts->Unexpected("churn_stream", "the stream ended before its first ack");
  client::StepParams params;
  params.learning_rate = 0.1;
  env_.counts->Record("churn_step", client()->Step(id, RandomVector(spec.dim), params).status());
  if (Chance(0.5)) {
    // Delete under the open stream: the next batch must end it with NOT_FOUND.
    env_.counts->Record("churn_delete", client()->DeleteSession(id));
    stream->Write(MakeBatch(spec, wid, 4));
    stream->WritesDone();
    while (stream->Read(&ack)) {
    }
    env_.counts->Record("churn_stream_after_delete", client::FromGrpcStatus(stream->Finish()),
                        {StatusCode::kNotFound});
    env_.counts->Record("churn_step_after_delete",
                        client()->Step(id, RandomVector(spec.dim), params).status(),
                        {StatusCode::kNotFound});
  } else {
    stream->WritesDone();
    while (stream->Read(&ack)) {
    }
    env_.counts->Record("churn_stream", client::FromGrpcStatus(stream->Finish()));
    env_.counts->Record("churn_delete", client()->DeleteSession(id));
  }
}

// --- The mix -----------------------------------------------------------------------------

std::map<std::string, int> Worker::DefaultMix() {
  return {{"stream", 35},    {"add_scores", 15}, {"step", 10},  {"fvp", 10},
          {"get_fisher", 8}, {"inspect", 4},     {"cancel", 4}, {"deadline", 5},
          {"abandon", 2},    {"churn", 6},       {"kill", 1}};
}

void Worker::RunMixed() {
  const std::vector<std::pair<std::string, void (Worker::*)()>> ops = {
      {"stream", &Worker::OpStream},
      {"add_scores", &Worker::OpAddScores},
      {"step", &Worker::OpStep},
      {"fvp", &Worker::OpFvp},
      {"get_fisher", &Worker::OpGetFisher},
      {"inspect", &Worker::OpInspect},
      {"cancel", &Worker::FaultCancelStream},
      {"deadline", &Worker::FaultDeadline},
      {"abandon", &Worker::FaultAbandonStreamer},
      {"churn", &Worker::Churn},
      {"kill", &Worker::FaultKilledChild},
  };
  std::map<std::string, int> weights = DefaultMix();
  for (const auto& [name, weight] : env_.mix) weights[name] = weight;
  int total = 0;
  for (const auto& [name, op] : ops) total += weights[name];
  while (total > 0 && !env_.stop->load()) {
    int pick = Uniform(0, total - 1);
    for (const auto& [name, op] : ops) {
      const int weight = weights[name];
      if (pick < weight) {
        (this->*op)();
        break;
      }
      pick -= weight;
    }
    if (env_.think_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(Uniform(0, 2 * env_.think_ms)));
    }
  }
}

}  // namespace fisherd::soak
