// fisherctl: operate a fisherd server from the shell (health probes, session admin,
// inspecting an estimate). Exit status: 0 success, 1 the server or the call failed
// (printed as "fisherctl: <CODE>: <message>"), 2 usage error.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/cli_flags.h"
#include "client/connection_flags.h"
#include "client/describe.h"
#include "client/fisher_client.h"
#include "client/read_file.h"

namespace fisherd::client {
namespace {
namespace v1 = ::fisherd::v1;

constexpr char kUsage[] =
    R"(usage: fisherctl [--target=HOST:PORT] [--timeout-seconds=S] COMMAND [ARGS]

commands:
  health [--service=NAME]      print SERVING or NOT_SERVING; exit 0 iff SERVING.
                               Waits up to --timeout-seconds for the server to come up.
  create ID --dim=N [--representation=dense|diagonal] [--centered]
            [--decay=RHO] [--damping=LAMBDA]
                               create sessions/ID
  create ID --block=SPEC [--block=SPEC ...] | --layout=FILE
            [--kronecker-damping=exact|factored] [--factor-refresh-period=N]
            [--decay=RHO] [--damping=LAMBDA] [--dim=N]
                               create a layered session: F is block-diagonal, one block
                               per SPEC, the parameters concatenated in the order given
                               (--dim, if given, must equal their total)
  get NAME | describe NAME     show a session (NAME: sessions/ID or ID); a layered one
                               adds a line per block: spec, parameters, and the rows
                               and W applied (to A and to G for a Kronecker block)
  list                         list sessions
  delete NAME                  delete a session
  fisher NAME [--block=NAME [--factor=activations|output_gradients]]
              [--eigenvalues] [--matrix]
                               summary of the Fisher estimate; --matrix also prints it.
                               Layered sessions: --block describes one block (--matrix
                               needs one); a Kronecker block's --factor selects A or G

block SPEC, NAME:KIND:SHAPE (NAME: 1-128 of [a-zA-Z0-9_.-], e.g. "features.0"):
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
  --layout=FILE                one SPEC a line instead; blank lines and '#...' ignored
  --kronecker-damping=exact    (default) solve with (G (x) A + lambda I) exactly;
                   =factored   with (G + sqrt(lambda)/pi I) (x) (A + pi sqrt(lambda) I)
  --factor-refresh-period=N    recompute a factor's eigenbasis at most every N steps
                               (default 1: whenever it changed)

flags:
  --timeout-seconds=S          deadline of the call (default 5 for health, 60 otherwise)
)";

// Exit codes.
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsageError = 2;

int UsageError(absl::string_view message) {
  std::cerr << "fisherctl: " << message << "\n\n" << kUsage << kConnectionFlagsHelp;
  return kUsageError;
}

int Failed(const absl::Status& status) {
  std::cerr << "fisherctl: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kFailed;
}

// A command after flags are read: a usage problem returns kUsageError before any RPC.
struct Command {
  std::vector<std::string> args;  // positional arguments after the command name
  CliFlags* flags;
  FisherClient* client = nullptr;
  absl::Duration timeout;
};

int RunHealth(Command& cmd) {
  const std::string service = cmd.flags->GetString("service", "");
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (!cmd.args.empty()) return UsageError("health takes no arguments");
  absl::StatusOr<ServingStatus> health = cmd.client->CheckHealth(cmd.timeout, service);
  if (!health.ok()) return Failed(health.status());
  std::cout << ServingStatusName(*health) << "\n";
  return *health == ServingStatus::kServing ? kOk : kFailed;
}

int RunCreate(Command& cmd) {
  CliFlags& f = *cmd.flags;
  absl::StatusOr<int64_t> dim = f.GetInt("dim", 0);
  const std::string representation = absl::AsciiStrToLower(f.GetString("representation", ""));
  absl::StatusOr<bool> centered = f.GetBool("centered", false);
  absl::StatusOr<double> decay = f.GetDouble("decay", 0.0);
  absl::StatusOr<double> damping = f.GetDouble("damping", 0.0);
  const std::vector<std::string> block_specs = f.GetAll("block");
  const std::string layout = f.GetString("layout", "");
  const std::string kronecker_damping =
      absl::AsciiStrToLower(f.GetString("kronecker-damping", ""));
  absl::StatusOr<int64_t> refresh = f.GetInt("factor-refresh-period", 0);
  for (const absl::Status& s : {dim.status(), centered.status(), decay.status(), damping.status(),
                                refresh.status(), f.CheckNoUnknownFlags()}) {
    if (!s.ok()) return UsageError(s.message());
  }
  if (cmd.args.size() != 1) return UsageError("create takes one session id");
  v1::SessionConfig config;

  // The layout: --block flags or a --layout file, not both.
  if (!block_specs.empty() && f.Has("layout")) {
    return UsageError("give the blocks as --block flags or as a --layout file, not both");
  }
  if (f.Has("layout")) {
    absl::StatusOr<std::string> text = ReadWholeFile(layout);
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
    if (f.Has("dim") && *dim < 1) return UsageError("--dim must be >= 1 (or left out)");
    config.set_dim(f.Has("dim") ? static_cast<uint64_t>(*dim) : 0);
    if (!representation.empty() && representation != "layered") {
      return UsageError("a session with --block or --layout is layered; leave out --representation");
    }
    config.set_representation(v1::REPRESENTATION_LAYERED);
    if (kronecker_damping.empty() || kronecker_damping == "exact") {
      config.set_kronecker_damping(v1::KRONECKER_DAMPING_EXACT);
    } else if (kronecker_damping == "factored") {
      config.set_kronecker_damping(v1::KRONECKER_DAMPING_FACTORED);
    } else {
      return UsageError("--kronecker-damping must be exact or factored");
    }
    if (*refresh < 0 || *refresh > std::numeric_limits<uint32_t>::max()) {
      return UsageError("--factor-refresh-period must be in [1, 2^32)");
    }
    config.set_factor_refresh_period(static_cast<uint32_t>(*refresh));
  } else {
    if (!f.Has("dim") || *dim < 1) {
      return UsageError("create needs --dim=N with N >= 1, or a layout (--block or --layout)");
    }
    if (f.Has("kronecker-damping") || f.Has("factor-refresh-period")) {
      return UsageError(
          "--kronecker-damping and --factor-refresh-period are for layered sessions "
          "(--block or --layout)");
    }
    config.set_dim(static_cast<uint64_t>(*dim));
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
  config.set_centered(*centered);
  // Range checks (decay in (0, 1], damping >= 0, block sizes) are the server's: one
  // source of truth.
  config.set_decay(*decay);
  config.set_damping(*damping);
  absl::StatusOr<v1::Session> session = cmd.client->CreateSession(cmd.args[0], config);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

int RunGet(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (cmd.args.size() != 1) return UsageError("get and describe take one session name");
  absl::StatusOr<v1::Session> session = cmd.client->GetSession(cmd.args[0]);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

int RunList(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (!cmd.args.empty()) return UsageError("list takes no arguments");
  absl::StatusOr<std::vector<v1::Session>> sessions = cmd.client->ListSessions();
  if (!sessions.ok()) return Failed(sessions.status());
  for (const v1::Session& session : *sessions) std::cout << DescribeSessionBrief(session) << "\n";
  std::cout << sessions->size() << (sessions->size() == 1 ? " session\n" : " sessions\n");
  return kOk;
}

int RunDelete(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (cmd.args.size() != 1) return UsageError("delete takes one session name");
  if (absl::Status s = cmd.client->DeleteSession(cmd.args[0]); !s.ok()) return Failed(s);
  std::cout << "deleted " << SessionName(cmd.args[0]) << "\n";
  return kOk;
}

int RunFisher(Command& cmd) {
  CliFlags& f = *cmd.flags;
  absl::StatusOr<bool> eigenvalues = f.GetBool("eigenvalues", false);
  absl::StatusOr<bool> matrix = f.GetBool("matrix", false);
  FisherQuery query;
  query.block = f.GetString("block", "");
  const std::string factor = absl::AsciiStrToLower(f.GetString("factor", ""));
  for (const absl::Status& s : {eigenvalues.status(), matrix.status(), f.CheckNoUnknownFlags()}) {
    if (!s.ok()) return UsageError(s.message());
  }
  if (cmd.args.size() != 1) return UsageError("fisher takes one session name");
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
  query.include_matrix = *matrix;
  query.include_eigenvalues = *eigenvalues;
  absl::StatusOr<FisherEstimate> fisher = cmd.client->GetFisher(cmd.args[0], query);
  if (!fisher.ok()) return Failed(fisher.status());
  std::cout << DescribeFisherSummary(fisher->summary);
  if (*matrix) {
    const uint64_t dim = fisher->summary.dim();
    std::cout << (fisher->diagonal ? "diagonal:\n" : "matrix:\n");
    // Full rows: one matrix row per line. Diagonal: the diagonal on one line.
    for (uint64_t i = 0; i < fisher->values.size(); ++i) {
      std::cout << absl::StrFormat("%.8g", fisher->values[i])
                << ((i + 1) % dim == 0 ? "\n" : " ");
    }
  }
  return kOk;
}

int Main(int argc, char** argv) {
  absl::StatusOr<CliFlags> parsed = CliFlags::Parse(argc, argv, /*repeatable=*/{"block"});
  if (!parsed.ok()) return UsageError(parsed.status().message());
  CliFlags& flags = *parsed;
  const bool help_command = !flags.positional().empty() &&
                            (flags.positional()[0] == "help" || flags.positional()[0] == "-h");
  if (flags.Has("help") || help_command) {
    std::cout << kUsage << kConnectionFlagsHelp;
    return kOk;
  }
  if (flags.positional().empty()) return UsageError("missing command");
  const std::string name = flags.positional()[0];

  ClientOptions options;
  if (absl::Status s = ReadConnectionFlags(flags, &options); !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) return UsageError(s.message());
    return Failed(s);
  }
  absl::StatusOr<double> timeout_seconds =
      flags.GetDouble("timeout-seconds", name == "health" ? 5.0 : 60.0);
  if (!timeout_seconds.ok()) return UsageError(timeout_seconds.status().message());
  if (!(*timeout_seconds > 0)) return UsageError("--timeout-seconds must be > 0");
  options.call_timeout = absl::Seconds(*timeout_seconds);

  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  if (!client.ok()) {
    if (client.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(client.status().message());
    }
    return Failed(client.status());
  }

  Command cmd{std::vector<std::string>(flags.positional().begin() + 1, flags.positional().end()),
              &flags, client->get(), options.call_timeout};
  if (name == "health") return RunHealth(cmd);
  if (name == "create") return RunCreate(cmd);
  if (name == "get" || name == "describe") return RunGet(cmd);
  if (name == "list") return RunList(cmd);
  if (name == "delete") return RunDelete(cmd);
  if (name == "fisher") return RunFisher(cmd);
  return UsageError(absl::StrCat("unknown command '", name, "'"));
}

}  // namespace
}  // namespace fisherd::client

int main(int argc, char** argv) { return fisherd::client::Main(argc, argv); }
