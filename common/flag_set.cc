#include "common/flag_set.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fisherd::common {
namespace {

constexpr size_t kFlagColumn = 32;  // where the help of a flag starts
constexpr size_t kLineWidth = 92;

// Help entries read `--name=DEFAULT` (or `--name=TYPE` without a default), as users
// type them, with the help wrapped to the line width.
class Formatter : public CLI::Formatter {
 public:
  Formatter() { column_width(kFlagColumn); }

  std::string make_option_opts(const CLI::Option* option) const override {
    if (option->get_type_name().empty()) return "";  // a boolean flag
    return absl::StrCat("=", option->get_default_str().empty() ? option->get_type_name()
                                                               : option->get_default_str());
  }

  std::string make_option_desc(const CLI::Option* option) const override {
    return Wrap(option->get_description());
  }

  // Help text broken into lines that end before the line width (after the column).
  static std::string Wrap(absl::string_view help) {
    std::string text;
    size_t column = 0;
    for (absl::string_view word : absl::StrSplit(help, ' ')) {
      if (column > 0 && column + 1 + word.size() > kLineWidth - kFlagColumn) {
        text += '\n';
        column = 0;
      } else if (column > 0) {
        text += ' ';
        ++column;
      }
      absl::StrAppend(&text, word);
      column += word.size();
    }
    return text;
  }
};

// Parses a number with `parse` and checks it is in [min, max] before storing it.
template <typename T>
std::function<absl::Status(absl::string_view)> NumberSetter(std::string flag, T* target, T min,
                                                            T max,
                                                            bool (*parse)(absl::string_view, T*),
                                                            const char* not_a_number) {
  return [=](absl::string_view value) {
    T parsed{};
    if (!parse(value, &parsed)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": ", not_a_number));
    }
    if (parsed < min || parsed > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, "=", value, ": must be in [", min, ", ", max, "]"));
    }
    *target = parsed;
    return absl::OkStatus();
  };
}

// The name of the option a CLI11 error message starts with ("--name: ...").
std::string OptionInMessage(absl::string_view message) {
  return std::string(message.substr(0, message.find(':')));
}

}  // namespace

struct FlagSet::Flag {
  std::string name;
  CLI::Option* option = nullptr;
  bool takes_value = true;
  bool repeated = false;
  std::function<absl::Status(absl::string_view)> set;
};

FlagSet::FlagSet(std::string program, std::string description)
    : owned_app_(std::make_unique<CLI::App>(std::move(description), std::move(program))),
      app_(owned_app_.get()),
      last_value_wins_(&own_last_value_wins_) {
  app_->formatter(std::make_shared<Formatter>());
}

FlagSet::FlagSet(CLI::App* app, bool* last_value_wins)
    : app_(app), last_value_wins_(last_value_wins) {}

FlagSet::~FlagSet() = default;

void FlagSet::Add(std::string name, std::string help, std::string default_value,
                  std::function<absl::Status(absl::string_view)> set) {
  auto flag = std::make_unique<Flag>();
  flag->option = app_->add_option(absl::StrCat("--", name))
                     ->description(std::move(help))
                     ->expected(1)
                     ->allow_extra_args(false)
                     ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
                     ->default_str(std::move(default_value));
  flag->name = std::move(name);
  flag->set = std::move(set);
  flags_.push_back(std::move(flag));
}

void FlagSet::AddString(std::string name, std::string* target, std::string help) {
  Add(std::move(name), std::move(help), *target, [target](absl::string_view value) {
    *target = std::string(value);
    return absl::OkStatus();
  });
  flags_.back()->option->type_name("TEXT");
}

void FlagSet::AddInt(std::string name, int64_t* target, int64_t min, int64_t max,
                     std::string help) {
  Add(name, std::move(help), absl::StrCat(*target),
      NumberSetter<int64_t>(
          name, target, min, max,
          [](absl::string_view text, int64_t* value) { return absl::SimpleAtoi(text, value); },
          "not an integer"));
  flags_.back()->option->type_name("INT");
}

void FlagSet::AddDouble(std::string name, double* target, double min, double max,
                        std::string help) {
  Add(name, std::move(help), absl::StrCat(*target),
      NumberSetter<double>(
          name, target, min, max,
          [](absl::string_view text, double* value) {
            return absl::SimpleAtod(text, value) && std::isfinite(*value);
          },
          "not a finite number"));
  flags_.back()->option->type_name("NUMBER");
}

void FlagSet::AddBool(std::string name, bool* target, std::string help) {
  auto flag = std::make_unique<Flag>();
  flag->option = app_->add_flag(absl::StrCat("--", name))->description(std::move(help));
  flag->takes_value = false;
  flag->set = [name, target](absl::string_view value) {
    if (absl::SimpleAtob(value, target)) return absl::OkStatus();
    if (absl::EqualsIgnoreCase(value, "on") || absl::EqualsIgnoreCase(value, "off")) {
      *target = absl::EqualsIgnoreCase(value, "on");
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, ": not true or false"));
  };
  flag->name = std::move(name);
  flags_.push_back(std::move(flag));
}

void FlagSet::AddRepeated(std::string name, std::vector<std::string>* target, std::string help) {
  Add(std::move(name), std::move(help), "", [target](absl::string_view value) {
    target->emplace_back(value);
    return absl::OkStatus();
  });
  flags_.back()->option->type_name("TEXT")->description(
      absl::StrCat(flags_.back()->option->get_description(), " (repeatable)"));
  flags_.back()->repeated = true;
}

void FlagSet::AddStringCheck(const std::string& name,
                             std::function<absl::Status(absl::string_view)> check) {
  Flag* flag = Find(name);
  if (flag == nullptr) return;
  flag->set = [set = std::move(flag->set), check = std::move(check)](absl::string_view value) {
    if (absl::Status status = check(value); !status.ok()) return status;
    return set(value);
  };
}

void FlagSet::AddPositionals(std::string name, std::vector<std::string>* target, std::string help) {
  app_->add_option(std::move(name), *target, std::move(help))->type_name("");
}

FlagSet* FlagSet::AddCommand(std::string name, std::string help) {
  CLI::App* command = app_->add_subcommand(std::move(name), Formatter::Wrap(help));
  command->fallthrough();  // the program's flags may follow the command's name
  commands_.push_back(std::unique_ptr<FlagSet>(new FlagSet(command, last_value_wins_)));
  return commands_.back().get();
}

void FlagSet::SetFooter(std::string text) { app_->footer(std::move(text)); }

void FlagSet::LastValueWins() { *last_value_wins_ = true; }

FlagSet::Flag* FlagSet::Find(absl::string_view name) {
  for (const std::unique_ptr<Flag>& flag : flags_) {
    if (flag->name == name) return flag.get();
  }
  for (const std::unique_ptr<FlagSet>& command : commands_) {
    if (Flag* flag = command->Find(name); flag != nullptr) return flag;
  }
  return nullptr;
}

bool FlagSet::Given(absl::string_view name) const {
  for (const std::unique_ptr<Flag>& flag : flags_) {
    if (flag->name == name) return flag->option->count() > 0;
  }
  return false;
}

bool FlagSet::Chosen() const { return app_->parsed(); }

std::string FlagSet::Help() const { return app_->help(); }

absl::Status FlagSet::Parse(int argc, const char* const* argv, bool* help) {
  return Parse(std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc), help);
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args, bool* help) {
  *help = false;
  // CLI11 takes its arguments last first. `--name=` (an empty value) is passed on as
  // `--name ""`, which CLI11 reads as the empty value rather than a missing one.
  std::vector<std::string> reversed;
  bool flags_ended = false;
  for (const std::string& arg : args) {
    if (!flags_ended && (arg == "--help" || arg == "-h")) *help = true;
    if (arg == "--") flags_ended = true;
    const Flag* flag = !flags_ended && absl::StartsWith(arg, "--") && absl::EndsWith(arg, "=")
                           ? Find(absl::string_view(arg).substr(2, arg.size() - 3))
                           : nullptr;
    if (flag != nullptr && flag->takes_value) {
      reversed.push_back(arg.substr(0, arg.size() - 1));
      reversed.emplace_back();
    } else {
      reversed.push_back(arg);
    }
  }
  std::reverse(reversed.begin(), reversed.end());
  try {
    app_->parse(reversed);
  } catch (const CLI::CallForHelp&) {
    *help = true;
  } catch (const CLI::CallForAllHelp&) {
    *help = true;
  } catch (const CLI::ExtrasError&) {
    if (*help) return absl::OkStatus();
    const std::vector<std::string> extras = app_->remaining(/*recurse=*/true);
    const std::string first = extras.empty() ? "" : extras.front();
    if (absl::StartsWith(first, "-")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", first.substr(0, first.find('='))));
    }
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", first, "\""));
  } catch (const CLI::ArgumentMismatch& e) {
    if (*help) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("flag ", OptionInMessage(e.what()), " needs a value"));
  } catch (const CLI::ParseError& e) {
    if (*help) return absl::OkStatus();
    return absl::InvalidArgumentError(e.what());
  }
  if (*help) return absl::OkStatus();
  return Apply();
}

absl::Status FlagSet::Apply() {
  for (const std::unique_ptr<Flag>& flag : flags_) {
    const std::vector<std::string>& values = flag->option->results();
    if (values.empty()) continue;
    if (values.size() > 1 && flag->takes_value && !flag->repeated && !*last_value_wins_) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", flag->name, " given twice"));
    }
    for (size_t i = flag->repeated ? 0 : values.size() - 1; i < values.size(); ++i) {
      if (absl::Status status = flag->set(values[i]); !status.ok()) return status;
    }
  }
  for (const std::unique_ptr<FlagSet>& command : commands_) {
    if (!command->Chosen()) continue;
    if (absl::Status status = command->Apply(); !status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace fisherd::common
