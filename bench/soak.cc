// fisherd-soak: a soak test of the real fisherd binary under a mixed, faulty load.
//
//   fisherd-soak [--seconds=60] [--streams=64] [--warmup-seconds=10] [--channels=8]
//                [--think-ms=10] [--max-rss-growth-pct=5] [--fd-slack=8]
//                [--drain-seconds=3] [--drain-load-seconds=2] [--durable=1]
//                [--max-children=2] [--seed=1] [--fisherd=PATH] [--inject-duplicate=0]
//                [--mix=NAME:WEIGHT,...]
//
// --mix changes the weights of the mix's operations (defaults: stream 35, add_scores 15,
// step 10, fvp 10, get_fisher 8, inspect 4, cancel 4, deadline 5, abandon 2, churn 6,
// kill 1), e.g. --mix=churn:0,kill:0 to tell which one a memory growth comes from.
//
// 1. Starts fisherd on a free loopback port (--data-dir in a fresh temporary directory
//    unless --durable=0) and creates the checked sessions (bench/soak_rows.h).
// 2. Runs --streams workers for --seconds (bench/soak_worker.h): each keeps a score
//    stream open and mixes AddScores, steps, FVPs, GetFisher, cancelled streams, tiny
//    deadlines, abandoned streams, SIGKILLed client processes and churn sessions.
//    fisherd's VmRSS is read after --warmup-seconds and at the end, its open fds before
//    the load and after it (once the workers' extra connections are gone).
// 3. Checks that every batch acknowledged to the workers is counted exactly once
//    (bench/soak_ledger.h).
// 4. Drain under load: the workers stream again, fisherd gets SIGTERM after
//    --drain-load-seconds and must exit with code 0 within its --drain-seconds plus 5 s.
//    With --durable, fisherd is restarted on the same directory and the exactly-once
//    check runs again, now covering the batches acknowledged during the drain.
//
// Prints a report (operations and failures by op x code, RSS, fds, verdicts) and, last,
// one JSON line. Exits 1 on an unexpected failure, an exactly-once violation, RSS growth
// above --max-rss-growth-pct, an fd leak (after > before + --fd-slack) or an unclean
// drain; 2 on bad flags.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/soak_child.h"
#include "bench/soak_ledger.h"
#include "bench/soak_process.h"
#include "bench/soak_report.h"
#include "bench/soak_rows.h"
#include "bench/soak_worker.h"
#include "client/fisher_client.h"
#include "common/flag_set.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace fisherd::soak {
namespace {
namespace v1 = ::fisherd::v1;

struct Flags {
  double seconds = 60;
  int64_t streams = 64;
  double warmup_seconds = 10;
  int64_t channels = 8;
  int64_t think_ms = 10;
  double max_rss_growth_pct = 5;
  int64_t fd_slack = 8;
  double drain_seconds = 3;
  double drain_load_seconds = 2;
  bool durable = true;
  int64_t max_children = 2;
  int64_t seed = 1;
  // Test of the checker itself: one batch goes in twice, behind the ledger's back (no
  // worker id, so no deduplication); the exactly-once check must then fail.
  bool inject_duplicate = false;
  std::map<std::string, int> mix;  // from --mix=stream:35,churn:0,...
  std::string fisherd = FISHERD_BIN;
  // Child mode.
  std::string child_stream;
  std::string child_session;
  std::string child_worker;
};

// --mix=NAME:WEIGHT,... over the names Worker::DefaultMix knows.
absl::Status ParseMix(absl::string_view text, std::map<std::string, int>* mix) {
  const std::map<std::string, int> known = Worker::DefaultMix();
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits(':', 1));
    int weight = 0;
    if (known.count(kv.first) == 0 || !absl::SimpleAtoi(kv.second, &weight) || weight < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--mix: \"", item, "\" is not NAME:WEIGHT with a known operation and a weight >= 0"));
    }
    (*mix)[kv.first] = weight;
  }
  return absl::OkStatus();
}

// 0 to run, else the exit code (0 after --help, 2 for bad flags).
int ParseFlags(int argc, char** argv, Flags* f) {
  common::FlagSet set("fisherd-soak", "Soaks a real fisherd with mixed, faulty load.");
  set.AddDouble("seconds", &f->seconds, 0.1, 86400, "length of the mixed phase");
  set.AddInt("streams", &f->streams, 1, 1024, "concurrent workers");
  set.AddDouble("warmup-seconds", &f->warmup_seconds, 0, 86400,
                "when the first resident-memory figure is taken");
  set.AddInt("channels", &f->channels, 1, 256, "connections the workers share");
  set.AddInt("think-ms", &f->think_ms, 0, 60000, "pause between a worker's operations");
  set.AddDouble("max-rss-growth-pct", &f->max_rss_growth_pct, 0, 1e6,
                "fail above this VmRSS growth after warm-up");
  set.AddInt("fd-slack", &f->fd_slack, 0, 1 << 20, "descriptors allowed beyond the start's");
  set.AddDouble("drain-seconds", &f->drain_seconds, 0, 3600, "fisherd's --drain-seconds");
  set.AddDouble("drain-load-seconds", &f->drain_load_seconds, 0, 3600,
                "load before SIGTERM in the drain phase");
  set.AddBool("durable", &f->durable, "run fisherd with --data-dir (a temporary directory)");
  set.AddInt("max-children", &f->max_children, 0, 64, "child clients alive at once (SIGKILLed)");
  set.AddInt("seed", &f->seed, 0, INT64_MAX, "random seed");
  set.AddBool("inject-duplicate", &f->inject_duplicate,
              "apply one batch twice behind the checker's back (tests the checker)");
  std::string mix;
  set.AddString("mix", &mix, "operation weights, NAME:WEIGHT,...");
  set.AddString("fisherd", &f->fisherd, "the fisherd binary");
  set.AddString("child-stream", &f->child_stream, "internal: run as a child client");
  set.AddString("child-session", &f->child_session, "internal: the child's session");
  set.AddString("child-worker", &f->child_worker, "internal: the child's worker id");
  bool help = false;
  absl::Status status = set.Parse(argc, argv, &help);
  if (help) {
    std::cout << set.Help();
    return -1;
  }
  if (status.ok()) status = ParseMix(mix, &f->mix);
  if (!status.ok()) {
    std::cerr << "fisherd-soak: " << status.message() << " (run fisherd-soak --help)\n";
    return 2;
  }
  return 0;
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void SleepUntil(std::chrono::steady_clock::time_point t) { std::this_thread::sleep_until(t); }

// A client on a channel of its own: gRPC shares one connection among channels with the
// same target and arguments unless they ask for a local subchannel pool, and the soak
// wants --channels real connections.
std::unique_ptr<client::FisherClient> Connect(const std::string& address) {
  client::ClientOptions options;
  options.target = address;
  options.call_timeout = absl::Seconds(30);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  auto c = std::make_unique<client::FisherClient>(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args), options);
  if (!c->CheckHealth(absl::Seconds(30)).ok()) return nullptr;
  return c;
}

// Runs fn(worker) on every worker in its own thread and joins them, counting each one
// that returns in *done (the caller watches it to tell a hang from a slow stop).
template <typename Fn>
void RunWorkers(std::vector<std::unique_ptr<Worker>>& workers, Fn fn, std::atomic<int>* done) {
  std::vector<std::thread> threads;
  for (auto& w : workers) {
    threads.emplace_back([&, worker = w.get()] {
      fn(worker);
      ++*done;
    });
  }
  for (std::thread& t : threads) t.join();
}

std::string VerdictText(const Ledger::Verdict& v) {
  std::string out = absl::StrFormat(
      "%s: %d worker ids, %d batches acknowledged, %d applied (%d applied without an ack the "
      "client saw), %d rows",
      v.ok ? "OK" : "VIOLATED", v.worker_ids, v.acked_batches, v.applied_batches, v.unacked_applied,
      v.rows);
  if (!v.unacked_applied_by_kind.empty()) {
    out +=
        "\n    applied without a seen ack, by sender (s streamer, u unary, c cancelled, "
        "d/e deadline, k killed child):";
    for (const auto& [kind, n] : v.unacked_applied_by_kind)
      absl::StrAppendFormat(&out, " %c=%d", kind, n);
  }
  for (const std::string& p : v.problems) out += "\n    " + p;
  return out;
}

std::string VerdictJson(const Ledger::Verdict& v) {
  return absl::StrFormat(
      "{\"ok\":%s,\"worker_ids\":%d,\"acked_batches\":%d,\"applied_batches\":%d,"
      "\"applied_unacked\":%d,\"rows\":%d}",
      v.ok ? "true" : "false", v.worker_ids, v.acked_batches, v.applied_batches, v.unacked_applied,
      v.rows);
}

int Run(const Flags& flags) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string data_dir;
  if (flags.durable) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fisherd-soak-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::cerr << "fisherd-soak: cannot create a temporary directory\n";
      return 1;
    }
    data_dir = tmpl;
  }
  std::vector<std::string> server_flags = {"--max-sessions=1024", "--math-threads=2",
                                           absl::StrCat("--drain-seconds=", flags.drain_seconds)};
  if (flags.durable) {
    server_flags.push_back("--data-dir=" + data_dir);
    server_flags.push_back("--snapshot-interval-seconds=5");
  }
  auto server = std::make_unique<FisherdProcess>(flags.fisherd, server_flags);
  if (!server->ok()) {
    std::cerr << "fisherd-soak: fisherd did not start:\n" << server->output() << "\n";
    return 1;
  }
  std::cout << "fisherd-soak: fisherd pid " << server->pid() << " on " << server->address()
            << (flags.durable ? " (durable, --data-dir in a temporary directory)" : " (in memory)")
            << "\n";

  std::vector<std::unique_ptr<client::FisherClient>> clients;
  for (int i = 0; i < flags.channels; ++i) {
    clients.push_back(Connect(server->address()));
    if (clients.back() == nullptr) {
      std::cerr << "fisherd-soak: cannot reach fisherd\n";
      return 1;
    }
  }
  const std::vector<SessionSpec> checked = CheckedSessions();
  Ledger ledger;
  OpCounts counts;
  for (const SessionSpec& s : checked) {
    if (absl::Status st = clients[0]->CreateSession(s.id, s.config).status(); !st.ok()) {
      std::cerr << "fisherd-soak: CreateSession " << s.id << ": " << st << "\n";
      return 1;
    }
    // One batch per target so that steps and products have something to work on.
    for (uint64_t seq = 1; seq <= static_cast<uint64_t>(TargetCount(s)); ++seq) {
      ledger.Sent(s.id, "seed", seq);
      absl::StatusOr<v1::ScoreAck> ack = clients[0]->AddScores(MakeBatch(s, "seed", seq));
      if (!ack.ok()) {
        std::cerr << "fisherd-soak: seeding " << s.id << ": " << ack.status() << "\n";
        return 1;
      }
      ledger.Acked(s.id, "seed", ack->sequence());
    }
  }
  if (flags.inject_duplicate) {
    v1::ScoreBatch twice = MakeBatch(checked[0], "seed", 1);
    twice.clear_worker_id();
    if (absl::Status st = clients[0]->AddScores(twice).status(); !st.ok()) {
      std::cerr << "fisherd-soak: --inject-duplicate: " << st << "\n";
      return 1;
    }
    std::cout << "fisherd-soak: --inject-duplicate: batch seed/1 of " << checked[0].id
              << " sent a second time without a worker id\n";
  }
  const pid_t pid = server->pid();
  const int fds_before = OpenFds(pid);
  const uint64_t rss_start = ResidentKiB(pid);

  // --- The mixed load -------------------------------------------------------------------
  std::atomic<bool> stop{false};
  std::atomic<int> children{0};
  std::atomic<int> done{0};
  SoakEnv env;
  for (auto& c : clients) env.clients.push_back(c.get());
  env.address = server->address();
  env.checked = checked;
  env.ledger = &ledger;
  env.counts = &counts;
  env.stop = &stop;
  env.children = &children;
  env.max_children = flags.max_children;
  env.self_exe = flags.max_children > 0 ? SelfExecutable() : "";
  env.think_ms = flags.think_ms;
  env.mix = flags.mix;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < flags.streams; ++i) {
    workers.push_back(std::make_unique<Worker>(i, env, flags.seed * 100003 + i));
  }
  std::cout << absl::StrFormat(
                   "fisherd-soak: %d workers for %.0f s (warm-up %.0f s), %d channels; "
                   "fisherd VmRSS %d KiB, %d fds\n",
                   flags.streams, flags.seconds, flags.warmup_seconds, flags.channels, rss_start,
                   fds_before)
            << std::flush;
  const auto load_start = std::chrono::steady_clock::now();
  std::thread load([&] {
    RunWorkers(
        workers,
        [](Worker* w) {
          w->RunMixed();
          w->Finish();
        },
        &done);
  });
  uint64_t rss_warm = 0, rss_peak = 0, anon_warm = 0;
  std::vector<std::string> timeline;
  const double warmup = std::min(flags.warmup_seconds, flags.seconds / 2);
  for (int tick = 1; Since(load_start) < flags.seconds; ++tick) {
    SleepUntil(std::min(
        load_start + std::chrono::seconds(tick),
        load_start + std::chrono::milliseconds(static_cast<int64_t>(flags.seconds * 1000))));
    const uint64_t rss = ResidentKiB(pid);
    rss_peak = std::max(rss_peak, rss);
    if (rss_warm == 0 && Since(load_start) >= warmup) {
      rss_warm = rss;
      anon_warm = ResidentKiB(pid, "RssAnon");
    }
    if (tick % 10 == 0) {
      const std::string line = absl::StrFormat("t=%ds VmRSS=%dKiB RssAnon=%dKiB fds=%d", tick, rss,
                                               ResidentKiB(pid, "RssAnon"), OpenFds(pid));
      timeline.push_back(line);
      std::cout << "fisherd-soak: " << line << "\n" << std::flush;
    }
  }
  stop = true;
  const auto stopped = std::chrono::steady_clock::now();
  // Every operation is bounded by its deadline (30 s); past that a worker is hung.
  while (done.load() < flags.streams && Since(stopped) < 90) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (done.load() < flags.streams) {
    std::cerr << "fisherd-soak: HANG: " << flags.streams - done.load()
              << " workers still busy 90 s after the stop\n";
    std::cout.flush();
    std::_Exit(3);
  }
  load.join();
  const uint64_t rss_end = ResidentKiB(pid);
  const uint64_t anon_end = ResidentKiB(pid, "RssAnon");
  if (rss_warm == 0) rss_warm = rss_end;
  if (anon_warm == 0) anon_warm = anon_end;
  const double rss_growth = 100.0 * (static_cast<double>(rss_end) - static_cast<double>(rss_warm)) /
                            static_cast<double>(rss_warm);
  // Closed connections leave fisherd's fd table when gRPC notices: give it a moment.
  int fds_after = OpenFds(pid);
  for (int i = 0; i < 100 && fds_after > fds_before + flags.fd_slack; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fds_after = OpenFds(pid);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // cancelled calls settle
  const Ledger::Verdict verdict = ledger.Check(clients[0].get(), checked);

  // --- Drain under load -------------------------------------------------------------------
  stop = false;
  done = 0;
  std::thread drain_load([&] {
    RunWorkers(
        workers, [](Worker* w) { w->RunStreamOnly(); }, &done);
  });
  std::this_thread::sleep_for(
      std::chrono::milliseconds(static_cast<int64_t>(flags.drain_load_seconds * 1000)));
  const FisherdProcess::Exit exit = server->Terminate(flags.drain_seconds + 30);
  const std::string server_output = server->output();
  const auto terminated = std::chrono::steady_clock::now();
  while (done.load() < flags.streams && Since(terminated) < 30) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop = true;
  while (done.load() < flags.streams && Since(terminated) < 90) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (done.load() < flags.streams) {
    std::cerr << "fisherd-soak: HANG: workers still busy 90 s after the drain\n";
    std::_Exit(3);
  }
  drain_load.join();
  for (auto& w : workers) w->Abandon();  // the server is gone: record the acks, close nothing
  constexpr double kDrainSlack = 5;
  const bool clean_drain =
      exit.exited && exit.code == 0 && exit.seconds <= flags.drain_seconds + kDrainSlack;

  Ledger::Verdict after_drain;
  bool checked_after_drain = false;
  if (flags.durable) {
    clients.clear();
    FisherdProcess restarted(flags.fisherd, {"--max-sessions=1024", "--data-dir=" + data_dir});
    std::unique_ptr<client::FisherClient> c =
        restarted.ok() ? Connect(restarted.address()) : nullptr;
    if (c == nullptr) {
      after_drain.ok = false;
      after_drain.problems.push_back("fisherd did not restart on the data directory: " +
                                     restarted.output());
    } else {
      after_drain = ledger.Check(c.get(), checked);
      checked_after_drain = true;
    }
    c.reset();
    restarted.Terminate(30);
    std::error_code ignored;
    std::filesystem::remove_all(data_dir, ignored);
  }

  // --- Report ---------------------------------------------------------------------------------
  const bool rss_ok = rss_growth <= flags.max_rss_growth_pct;
  const bool fds_ok = fds_after <= fds_before + flags.fd_slack;
  const bool errors_ok = counts.unexpected() == 0;
  const bool once_ok = verdict.ok && (!flags.durable || after_drain.ok);
  const bool pass = rss_ok && fds_ok && errors_ok && once_ok && clean_drain;
  std::cout << counts.Text();
  std::cout << absl::StrFormat(
      "fisherd VmRSS: start %d KiB, after warm-up (%.0f s) %d KiB, end %d KiB, peak %d KiB: "
      "growth %+.2f%% after warm-up (limit %.1f%%) %s\n",
      rss_start, warmup, rss_warm, rss_end, rss_peak, rss_growth, flags.max_rss_growth_pct,
      rss_ok ? "OK" : "FAIL");
  std::cout << absl::StrFormat(
      "fisherd RssAnon (heap, stacks; VmRSS less the binary's and libraries' pages): after "
      "warm-up %d KiB, end %d KiB (%+.2f%%)\n",
      anon_warm, anon_end,
      100.0 * (static_cast<double>(anon_end) - static_cast<double>(anon_warm)) /
          static_cast<double>(std::max<uint64_t>(anon_warm, 1)));
  std::cout << absl::StrFormat("fisherd open fds: before %d, after %d (slack %d) %s\n", fds_before,
                               fds_after, flags.fd_slack, fds_ok ? "OK" : "FAIL");
  std::cout << "exactly-once after the load: " << VerdictText(verdict) << "\n";
  std::cout << absl::StrFormat(
      "drain under load: SIGTERM after %.1f s of streaming, exit %s code %d signal %d after "
      "%.2f s (drain period %.1f s + %.0f s slack) %s\n",
      flags.drain_load_seconds, exit.exited ? "exited" : "DID NOT EXIT", exit.code, exit.signal,
      exit.seconds, flags.drain_seconds, kDrainSlack, clean_drain ? "OK" : "FAIL");
  if (flags.durable) {
    std::cout << "exactly-once after the drain (fisherd restarted on its data directory): "
              << VerdictText(after_drain) << "\n";
  } else {
    std::cout << "exactly-once after the drain: not checked (--durable=0: the sessions die with "
                 "the process)\n";
  }
  if (!clean_drain) std::cout << "fisherd's last output:\n" << server_output << "\n";
  std::cout << "fisherd-soak: " << (pass ? "PASS" : "FAIL") << " in "
            << absl::StrFormat("%.1f s", Since(t0)) << "\n";
  std::cout << absl::StrFormat(
                   "{\"bench\":\"soak\",\"pass\":%s,\"seconds\":%g,\"streams\":%d,"
                   "\"channels\":%d,\"think_ms\":%d,\"durable\":%s,\"counts\":%s,"
                   "\"rss_kib\":{\"start\":%d,\"warm\":%d,\"end\":%d,\"peak\":%d,"
                   "\"anon_warm\":%d,\"anon_end\":%d},"
                   "\"rss_growth_pct\":%.3f,\"fds\":{\"before\":%d,\"after\":%d},"
                   "\"exactly_once\":%s,\"drain\":{\"clean\":%s,\"code\":%d,\"seconds\":%.3f},"
                   "\"exactly_once_after_drain\":%s}",
                   pass ? "true" : "false", flags.seconds, flags.streams, flags.channels,
                   flags.think_ms, flags.durable ? "true" : "false", counts.Json(), rss_start,
                   rss_warm, rss_end, rss_peak, anon_warm, anon_end, rss_growth, fds_before,
                   fds_after, VerdictJson(verdict), clean_drain ? "true" : "false", exit.code,
                   exit.seconds, checked_after_drain ? VerdictJson(after_drain) : "null")
            << std::endl;
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace fisherd::soak

int main(int argc, char** argv) {
  fisherd::soak::Flags flags;
  if (const int code = fisherd::soak::ParseFlags(argc, argv, &flags); code != 0) {
    return code < 0 ? 0 : code;
  }
  if (!flags.child_stream.empty()) {
    return fisherd::soak::RunChildStream(flags.child_stream, flags.child_session,
                                         flags.child_worker, 20);
  }
  return fisherd::soak::Run(flags);
}
