// The command-line flags of every fisherd program (fisherd, fisherctl, fisherd-demo,
// the benchmarks), declared once and parsed by CLI11.
//
// A flag is bound to a variable whose value when it is declared is its default, and the
// --help text is generated from the declarations. Names are hyphenated and given
// without the dashes ("max-sessions"). On the command line a flag with a value takes
// `--name=VALUE` or `--name VALUE`; a boolean flag is bare `--name` (true) or
// `--name=true|false` (also 1/0, yes/no, on/off). `--` ends the flags. A program with
// commands (fisherctl) declares each with AddCommand; the program's own flags may also
// be given after the command's name.
//
// Errors are INVALID_ARGUMENT and name the flag and, where there is one, the value:
// "unknown flag --bogus", "flag --max-sessions needs a value",
// "--max-sessions=ten: not an integer", "--max-sessions=0: must be in [1, 1048576]".
#ifndef FISHERD_COMMON_FLAG_SET_H_
#define FISHERD_COMMON_FLAG_SET_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace CLI {
class App;
}  // namespace CLI

namespace fisherd::common {

class FlagSet {
 public:
  // `program` heads the usage line; `description` follows it in --help.
  explicit FlagSet(std::string program = "", std::string description = "");
  ~FlagSet();
  FlagSet(const FlagSet&) = delete;
  FlagSet& operator=(const FlagSet&) = delete;

  // Each Add binds `--name` to *target, whose current value is the default --help
  // shows. REQUIRES: target outlives the FlagSet; names are unique and have no '='.
  void AddString(std::string name, std::string* target, std::string help);
  void AddInt(std::string name, int64_t* target, int64_t min, int64_t max, std::string help);
  // Finite values in [min, max] only.
  void AddDouble(std::string name, double* target, double min, double max, std::string help);
  void AddBool(std::string name, bool* target, std::string help);
  // A flag that may be given many times; *target gets every value, in order.
  void AddRepeated(std::string name, std::vector<std::string>* target, std::string help);
  // A check on a string flag's value beyond its type (e.g. the shape of HOST:PORT); its
  // message should name the flag and the value. REQUIRES: `name` was added.
  void AddStringCheck(const std::string& name,
                      std::function<absl::Status(absl::string_view)> check);
  // The arguments that are not flags, in order; without this, any is an error.
  void AddPositionals(std::string name, std::vector<std::string>* target, std::string help);
  // A command (`fisherctl create ...`) with flags and positionals of its own. The
  // returned set is owned by this one.
  FlagSet* AddCommand(std::string name, std::string help);
  // Text --help prints after the generated list of flags.
  void SetFooter(std::string text);
  // A flag given twice: by default an error; after this call, the last value wins.
  void LastValueWins();

  // Parses argv-style arguments, without the program name. Sets *help when --help or
  // -h was given (then nothing else is reported, and Help() describes the command it
  // was given to). INVALID_ARGUMENT as described above.
  absl::Status Parse(const std::vector<std::string>& args, bool* help);
  // The same from main's arguments; argv[0] is the program name.
  absl::Status Parse(int argc, const char* const* argv, bool* help);

  // After Parse: whether `--name` was on the command line.
  bool Given(absl::string_view name) const;
  // After Parse, for a set from AddCommand: whether this command was chosen.
  bool Chosen() const;

  // The usage: a line, the description, the commands, every flag with its default and
  // help, and the footer.
  std::string Help() const;

 private:
  struct Flag;
  FlagSet(CLI::App* app, bool* last_value_wins);
  Flag* Find(absl::string_view name);
  // After CLI11 has split the arguments: checks and stores every value given.
  absl::Status Apply();
  void Add(std::string name, std::string help, std::string default_value,
           std::function<absl::Status(absl::string_view)> set);

  std::unique_ptr<CLI::App> owned_app_;
  CLI::App* app_;
  bool own_last_value_wins_ = false;
  bool* last_value_wins_;  // the root set's, shared by its commands
  std::vector<std::unique_ptr<Flag>> flags_;
  std::vector<std::unique_ptr<FlagSet>> commands_;
};

}  // namespace fisherd::common

#endif  // FISHERD_COMMON_FLAG_SET_H_
