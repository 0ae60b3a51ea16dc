// fisherctl: operate a fisherd server from the shell (health probes, session admin,
// inspecting an estimate). Exit status: 0 success, 1 the server or the call failed
// (printed as "fisherctl: <CODE>: <message>"), 2 usage error.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cli_flags.h"
#include "client/connection_flags.h"
#include "client/describe.h"
#include "client/fisher_client.h"
#include "common/read_file.h"

namespace fisherd::client {
namespace {
namespace v1 = ::fisherd::v1;

constexpr char kDescription[] =
    "Operates a fisherd server: health probes, session admin, inspecting an estimate.\n"
    "Exit status: 0 success, 1 the server or the call failed, 2 usage error.";

constexpr char kFooter[] =
    R"(block SPEC, NAME:KIND:SHAPE (NAME: 1-128 of [a-zA-Z0-9_.-], e.g. "features.0"):
  NAME:dense:DIM               a dense DIM x DIM block
  NAME:diagonal:DIM            its diagonal only
  NAME:low_rank:DIM/ROWS       the latest ROWS score rows (exact Woodbury steps)
  NAME:kronecker:INxOUT[+bias] K-FAC's G (x) A of a layer with IN inputs and OUT outputs
                               (a convolution: IN = in_channels*kh*kw, OUT =
                               out_channels); its parameters are the OUT x IN weights,
                               row-major, then the OUT biases with +bias
  e.g. a 784-1000-10 MLP, a 3x3 convolution with 16 filters, a batch norm, an embedding:
    fisherctl create mlp --block=fc1:kronecker:784x1000+bias \
        --block=fc2:kronecker:1000x10+bias --block=conv1:kronecker:27x16+bias \
        --block=bn1:diagonal:64 --block=emb:low_rank:5000/16 --damping=1e-3
  --layout=FILE: one SPEC a line instead; blank lines and '#...' ignored

`fisherctl COMMAND --help` lists the flags of a command.
)";

// Exit codes.
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsageError = 2;

int UsageError(absl::string_view message) {
  std::cerr << "fisherctl: " << message << "\n(run fisherctl --help for the commands and flags)\n";
  return kUsageError;
}

int Failed(const absl::Status& status) {
  std::cerr << "fisherctl: " << absl::StatusCodeToString(status.code()) << ": " << status.message()
            << "\n";
  return kFailed;
}

// Every flag of every command; a command reads those it declared (DefineFlags).
struct CtlFlags {
  ConnectionFlags connection;
  double timeout_seconds = 0;     // 0: 5 for health, 60 otherwise
  std::vector<std::string> args;  // positional arguments after the command name
  // health
  std::string service;
  // create
  int64_t dim = 0;
  std::string representation;
  bool centered = false;
  double decay = 0;
  double damping = 0;
  std::vector<std::string> blocks;
  std::string layout;
  std::string kronecker_damping;
  int64_t factor_refresh_period = 0;
  bool float32_products = false;
  // list
  std::vector<std::string> replicas;
  // fisher
  std::string block;
  std::string factor;
  bool eigenvalues = false;
  bool matrix = false;
};

// A command after flags are read: a usage problem returns kUsageError before any RPC.
struct Command {
  const CtlFlags& flags;
  const CliFlags& given;  // the command's flag set, to ask which flags were given
  FisherClient* client = nullptr;
  absl::Duration timeout;
  const ClientOptions* options = nullptr;  // the connection client was made with
};

int RunHealth(Command& cmd) {
  if (!cmd.flags.args.empty()) return UsageError("health takes no arguments");
  absl::StatusOr<ServingStatus> health = cmd.client->CheckHealth(cmd.timeout, cmd.flags.service);
  if (!health.ok()) return Failed(health.status());
  std::cout << HealthCheckResponse::ServingStatus_Name(*health) << "\n";
  return *health == HealthCheckResponse::SERVING ? kOk : kFailed;
}

int RunCreate(Command& cmd) {
  const CtlFlags& f = cmd.flags;
  const std::string representation = absl::AsciiStrToLower(f.representation);
  const std::string kronecker_damping = absl::AsciiStrToLower(f.kronecker_damping);
  const std::vector<std::string>& block_specs = f.blocks;
  const std::string& layout = f.layout;
  if (f.args.size() != 1) return UsageError("create takes one session id");
  v1::SessionConfig config;

  // The layout: --block flags or a --layout file, not both.
  if (!block_specs.empty() && cmd.given.Given("layout")) {
    return UsageError("give the blocks as --block flags or as a --layout file, not both");
  }
  if (cmd.given.Given("layout")) {
    absl::StatusOr<std::string> text = common::ReadFileToString(layout);
    if (!text.ok()) return Failed(text.status());
    absl::StatusOr<std::vector<v1::BlockConfig>> blocks = ParseLayoutText(*text);
    if (!blocks.ok()) return UsageError(absl::StrCat(layout, ": ", blocks.status().message()));
    for (v1::BlockConfig& block : *blocks) *config.add_blocks() = std::move(block);
  }
  for (const std::string& spec : block_specs) {
    absl::StatusOr<v1::BlockConfig> block = ParseBlockSpec(spec);
    if (!block.ok()) return UsageError(block.status().message());
    *config.add_blocks() = *std::move(block);
  }
  const bool layered = config.blocks_size() > 0;

  if (layered) {
    // The server fills in dim from the blocks; one given here is checked against them.
    config.set_dim(static_cast<uint64_t>(f.dim));
    if (!representation.empty() && representation != "layered") {
      return UsageError(
          "a session with --block or --layout is layered; leave out --representation");
    }
    config.set_representation(v1::REPRESENTATION_LAYERED);
    if (kronecker_damping.empty() || kronecker_damping == "exact") {
      config.set_kronecker_damping(v1::KRONECKER_DAMPING_EXACT);
    } else if (kronecker_damping == "factored") {
      config.set_kronecker_damping(v1::KRONECKER_DAMPING_FACTORED);
    } else {
      return UsageError("--kronecker-damping must be exact or factored");
    }
    config.set_factor_refresh_period(static_cast<uint32_t>(f.factor_refresh_period));
  } else {
    if (!cmd.given.Given("dim")) {
      return UsageError("create needs --dim=N with N >= 1, or a layout (--block or --layout)");
    }
    if (cmd.given.Given("kronecker-damping") || cmd.given.Given("factor-refresh-period")) {
      return UsageError(
          "--kronecker-damping and --factor-refresh-period are for layered sessions "
          "(--block or --layout)");
    }
    config.set_dim(static_cast<uint64_t>(f.dim));
    if (representation.empty() || representation == "dense") {
      config.set_representation(v1::REPRESENTATION_DENSE);
    } else if (representation == "diagonal") {
      config.set_representation(v1::REPRESENTATION_DIAGONAL);
    } else if (representation == "layered") {
      return UsageError("--representation=layered needs the blocks: --block or --layout");
    } else {
      return UsageError("--representation must be dense or diagonal");
    }
  }
  config.set_centered(f.centered);
  // Range checks (decay in (0, 1], damping >= 0, block sizes) are the server's: one
  // source of truth.
  config.set_decay(f.decay);
  config.set_damping(f.damping);
  config.set_float32_products(f.float32_products);
  absl::StatusOr<v1::Session> session = cmd.client->CreateSession(f.args[0], config);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

int RunGet(Command& cmd) {
  if (cmd.flags.args.size() != 1) return UsageError("get and describe take one session name");
  absl::StatusOr<v1::Session> session = cmd.client->GetSession(cmd.flags.args[0]);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

// `list --replica A --replica B ...`: behind a proxy that routes sessions over replicas,
// ListSessions reaches one replica only, so ask each one directly (with the same TLS
// and token flags) and say where every session lives. A session on two replicas is
// reported: the proxy can reach only one of them.
int RunListReplicas(Command& cmd) {
  std::map<std::string, std::vector<std::string>> homes;  // session name -> replicas
  int total = 0;
  bool failed = false;
  for (const std::string& replica : cmd.flags.replicas) {
    ClientOptions options = *cmd.options;
    options.target = replica;
    absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
    absl::StatusOr<std::vector<v1::Session>> sessions =
        client.ok() ? (*client)->ListSessions() : client.status();
    if (!sessions.ok()) {
      std::cerr << "fisherctl: replica " << replica << ": "
                << absl::StatusCodeToString(sessions.status().code()) << ": "
                << sessions.status().message() << "\n";
      failed = true;
      continue;
    }
    for (const v1::Session& session : *sessions) {
      std::cout << replica << "  " << DescribeSessionBrief(session) << "\n";
      homes[session.name()].push_back(replica);
      ++total;
    }
  }
  for (const auto& [name, replicas] : homes) {
    if (replicas.size() > 1) {
      std::cerr << "fisherctl: " << name << " is on " << replicas.size()
                << " replicas: " << absl::StrJoin(replicas, ", ") << "\n";
    }
  }
  std::cout << total << (total == 1 ? " session on " : " sessions on ") << cmd.flags.replicas.size()
            << " replicas\n";
  return failed ? kFailed : kOk;
}

int RunList(Command& cmd) {
  if (!cmd.flags.args.empty()) return UsageError("list takes no arguments");
  if (!cmd.flags.replicas.empty()) return RunListReplicas(cmd);
  absl::StatusOr<std::vector<v1::Session>> sessions = cmd.client->ListSessions();
  if (!sessions.ok()) return Failed(sessions.status());
  for (const v1::Session& session : *sessions) std::cout << DescribeSessionBrief(session) << "\n";
  std::cout << sessions->size() << (sessions->size() == 1 ? " session\n" : " sessions\n");
  return kOk;
}

int RunDelete(Command& cmd) {
  if (cmd.flags.args.size() != 1) return UsageError("delete takes one session name");
  if (absl::Status s = cmd.client->DeleteSession(cmd.flags.args[0]); !s.ok()) return Failed(s);
  std::cout << "deleted " << SessionName(cmd.flags.args[0]) << "\n";
  return kOk;
}

int RunFisher(Command& cmd) {
  const CtlFlags& f = cmd.flags;
  FisherQuery query;
  query.block = f.block;
  const std::string factor = absl::AsciiStrToLower(f.factor);
  if (f.args.size() != 1) return UsageError("fisher takes one session name");
  if (factor.empty()) {
    query.factor = v1::FACTOR_UNSPECIFIED;
  } else if (factor == "activations" || factor == "a") {
    query.factor = v1::FACTOR_ACTIVATIONS;
  } else if (factor == "output_gradients" || factor == "output-gradients" || factor == "g") {
    query.factor = v1::FACTOR_OUTPUT_GRADIENTS;
  } else {
    return UsageError("--factor must be activations (A) or output_gradients (G)");
  }
  if (query.factor != v1::FACTOR_UNSPECIFIED && query.block.empty()) {
    return UsageError("--factor needs --block (the Kronecker block whose factor to show)");
  }
  // Whether a block exists, and whether it has factors, is the server's to say.
  query.include_matrix = f.matrix;
  query.include_eigenvalues = f.eigenvalues;
  absl::StatusOr<FisherEstimate> fisher = cmd.client->GetFisher(f.args[0], query);
  if (!fisher.ok()) return Failed(fisher.status());
  std::cout << DescribeFisherSummary(fisher->summary);
  if (f.matrix) {
    const uint64_t dim = fisher->summary.dim();
    std::cout << (fisher->diagonal ? "diagonal:\n" : "matrix:\n");
    // Full rows: one matrix row per line. Diagonal: the diagonal on one line.
    for (uint64_t i = 0; i < fisher->values.size(); ++i) {
      std::cout << absl::StrFormat("%.8g", fisher->values[i]) << ((i + 1) % dim == 0 ? "\n" : " ");
    }
  }
  return kOk;
}

// The commands, each with its flags; returns them by name.
std::map<std::string, CliFlags*> DefineFlags(CtlFlags* f, CliFlags* set) {
  DefineConnectionFlags(&f->connection, set);
  set->AddDouble("timeout-seconds", &f->timeout_seconds, 0, 1e9,
                 "deadline of the call (default 5 for health, 60 otherwise)");
  constexpr double kAny = std::numeric_limits<double>::max();
  std::map<std::string, CliFlags*> commands;
  auto command = [&](const char* name, const char* help, const char* args) {
    CliFlags* c = set->AddCommand(name, help);
    if (*args != '\0') c->AddPositionals("args", &f->args, args);
    return commands[name] = c;
  };
  CliFlags* health = command("health",
                             "print SERVING or NOT_SERVING; exit 0 iff SERVING. Waits up to "
                             "--timeout-seconds for the server to come up.",
                             "");
  health->AddString("service", &f->service, "the service to ask about (default: the server)");

  CliFlags* create =
      command("create",
              "create sessions/ID: --dim=N for a dense or diagonal session, or the blocks "
              "of a layered one (--block or --layout; F is block-diagonal, one block per SPEC, the "
              "parameters concatenated in the order given)",
              "ID");
  create->AddInt("dim", &f->dim, 1, std::numeric_limits<int64_t>::max(),
                 "parameters; with blocks, if given, must equal their total");
  create->AddString("representation", &f->representation, "dense (default) or diagonal");
  create->AddBool("centered", &f->centered, "subtract the running mean of the scores");
  create->AddDouble("decay", &f->decay, -kAny, kAny,
                    "RHO in (0, 1]: weight of the old statistics per batch (default: none)");
  create->AddDouble("damping", &f->damping, -kAny, kAny, "LAMBDA added to F's diagonal");
  create->AddRepeated("block", &f->blocks, "a block SPEC of a layered session (below)");
  create->AddString("layout", &f->layout, "a FILE of block SPECs, one a line");
  create->AddString("kronecker-damping", &f->kronecker_damping,
                    "exact (default): solve with (G (x) A + lambda I) exactly; factored: with "
                    "(G + sqrt(lambda)/pi I) (x) (A + pi sqrt(lambda) I)");
  create->AddInt("factor-refresh-period", &f->factor_refresh_period, 0,
                 std::numeric_limits<uint32_t>::max(),
                 "recompute a factor's eigenbasis at most every N steps (default 1: "
                 "whenever it changed)");
  create->AddBool("float32-products", &f->float32_products,
                  "multiply large batches in float32 (~1e-7 relative error in F) and take "
                  "Kronecker steps' eigenbasis products in float32 (about 2x faster)");

  command("get",
          "show a session (NAME: sessions/ID or ID); a layered one adds a line per "
          "block: spec, parameters, and the rows and W applied",
          "NAME");
  command("describe", "the same as get", "NAME");
  CliFlags* list = command("list", "list sessions", "");
  list->AddRepeated("replica", &f->replicas,
                    "HOST:PORT of a replica behind a session-routing proxy; repeat it to "
                    "list the sessions of every replica, each line prefixed with its replica "
                    "(--target is then not used)");
  command("delete", "delete a session", "NAME");
  CliFlags* fisher =
      command("fisher", "summary of the Fisher estimate; --matrix also prints it", "NAME");
  fisher->AddString("block", &f->block,
                    "layered sessions: describe this block (--matrix needs one)");
  fisher->AddString("factor", &f->factor,
                    "activations (A) or output_gradients (G) of a Kronecker --block");
  fisher->AddBool("eigenvalues", &f->eigenvalues, "also its eigenvalues");
  fisher->AddBool("matrix", &f->matrix, "also the matrix (a diagonal: its diagonal)");
  command("help", "print this help", "");
  return commands;
}

int Main(int argc, char** argv) {
  CtlFlags f;
  CliFlags set("fisherctl", kDescription);
  set.SetFooter(kFooter);
  const std::map<std::string, CliFlags*> commands = DefineFlags(&f, &set);
  bool help = false;
  const absl::Status parsed = set.Parse(argc, argv, &help);
  if (help || commands.at("help")->Chosen()) {
    std::cout << set.Help();
    return kOk;
  }
  if (!parsed.ok()) return UsageError(parsed.message());
  std::string name;
  for (const auto& [command_name, command] : commands) {
    if (command->Chosen()) name = command_name;
  }
  if (name.empty()) return UsageError("missing command");

  ClientOptions options;
  if (absl::Status s = ReadConnectionFlags(f.connection, &options); !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) return UsageError(s.message());
    return Failed(s);
  }
  if (set.Given("timeout-seconds") && !(f.timeout_seconds > 0)) {
    return UsageError("--timeout-seconds must be > 0");
  }
  const double timeout_seconds = set.Given("timeout-seconds") ? f.timeout_seconds
                                 : name == "health"           ? 5.0
                                                              : 60.0;
  options.call_timeout = absl::Seconds(timeout_seconds);

  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  if (!client.ok()) {
    if (client.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(client.status().message());
    }
    return Failed(client.status());
  }

  Command cmd{f, *commands.at(name), client->get(), options.call_timeout, &options};
  if (name == "health") return RunHealth(cmd);
  if (name == "create") return RunCreate(cmd);
  if (name == "get" || name == "describe") return RunGet(cmd);
  if (name == "list") return RunList(cmd);
  if (name == "delete") return RunDelete(cmd);
  return RunFisher(cmd);
}

}  // namespace
}  // namespace fisherd::client

int main(int argc, char** argv) { return fisherd::client::Main(argc, argv); }
