// The shared flag set (common/flag_set.h): both forms of a value, boolean flags,
// repeated flags, commands, --help, and errors that name the flag and the value.
#include "common/flag_set.h"

#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fisherd::common {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Values {
  std::string text = "default";
  int64_t count = 5;
  double ratio = 0.25;
  bool on = false;
  std::vector<std::string> items;
  std::vector<std::string> positionals;
};

void Define(Values* v, FlagSet* set) {
  set->AddString("text", &v->text, "a string");
  set->AddInt("count", &v->count, 1, 100, "an integer in [1, 100]");
  set->AddDouble("ratio", &v->ratio, 0, 1, "a number in [0, 1]");
  set->AddBool("on", &v->on, "a boolean");
  set->AddRepeated("item", &v->items, "a repeatable string");
}

absl::Status Parse(const std::vector<std::string>& args, Values* v, bool* help = nullptr) {
  FlagSet set("prog");
  Define(v, &set);
  bool ignored = false;
  return set.Parse(args, help != nullptr ? help : &ignored);
}

TEST(FlagSetTest, DefaultsStayWhenNothingIsGiven) {
  Values v;
  ASSERT_TRUE(Parse({}, &v).ok());
  EXPECT_EQ(v.text, "default");
  EXPECT_EQ(v.count, 5);
  EXPECT_EQ(v.ratio, 0.25);
  EXPECT_FALSE(v.on);
  EXPECT_TRUE(v.items.empty());
}

TEST(FlagSetTest, BothFormsOfAValue) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--text=hello world", "--count=7", "--ratio=0.5", "--on", "--item=a", "--item=b"},
           {"--text", "hello world", "--count", "7", "--ratio", "0.5", "--on", "--item", "a",
            "--item", "b"}}) {
    Values v;
    const absl::Status status = Parse(args, &v);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(v.text, "hello world");
    EXPECT_EQ(v.count, 7);
    EXPECT_EQ(v.ratio, 0.5);
    EXPECT_TRUE(v.on);
    EXPECT_THAT(v.items, ElementsAre("a", "b"));
  }
}

TEST(FlagSetTest, BooleanForms) {
  for (const auto& [arg, expected] :
       std::vector<std::pair<std::string, bool>>{{"--on", true},
                                                 {"--on=true", true},
                                                 {"--on=1", true},
                                                 {"--on=yes", true},
                                                 {"--on=false", false},
                                                 {"--on=0", false},
                                                 {"--on=no", false}}) {
    Values v;
    v.on = !expected;
    ASSERT_TRUE(Parse({arg}, &v).ok()) << arg;
    EXPECT_EQ(v.on, expected) << arg;
  }
  // A bare boolean never takes the next argument as its value.
  FlagSet set("prog");
  Values v;
  Define(&v, &set);
  set.AddPositionals("ARGS", &v.positionals, "the rest");
  bool help = false;
  ASSERT_TRUE(set.Parse({"--on", "false"}, &help).ok());
  EXPECT_TRUE(v.on);
  EXPECT_THAT(v.positionals, ElementsAre("false"));
}

TEST(FlagSetTest, EmptyValueAndEndOfFlags) {
  FlagSet set("prog");
  Values v;
  Define(&v, &set);
  set.AddPositionals("ARGS", &v.positionals, "the rest");
  bool help = false;
  ASSERT_TRUE(set.Parse({"--text=", "x", "--", "--count=9"}, &help).ok());
  EXPECT_EQ(v.text, "");
  EXPECT_EQ(v.count, 5);
  EXPECT_THAT(v.positionals, ElementsAre("x", "--count=9"));
  EXPECT_TRUE(set.Given("text"));
  EXPECT_FALSE(set.Given("count"));
}

TEST(FlagSetTest, ErrorsNameTheFlagAndTheValue) {
  struct Case {
    std::vector<std::string> args;
    std::string mention;
  };
  for (const Case& c : std::vector<Case>{
           {{"--bogus=1"}, "unknown flag --bogus"},
           {{"--bogus"}, "unknown flag --bogus"},
           {{"--text_=1"}, "unknown flag --text_"},
           {{"stray"}, "unexpected argument \"stray\""},
           {{"--count"}, "flag --count needs a value"},
           {{"--count=seven"}, "--count=seven: not an integer"},
           {{"--count", "0"}, "--count=0: must be in [1, 100]"},
           {{"--count=101"}, "--count=101: must be in [1, 100]"},
           {{"--ratio=x"}, "--ratio=x: not a finite number"},
           {{"--ratio=inf"}, "--ratio=inf: not a finite number"},
           {{"--ratio=2"}, "--ratio=2: must be in [0, 1]"},
           {{"--on=maybe"}, "--on=maybe: not true or false"},
           {{"--text=a", "--text=b"}, "flag --text given twice"},
       }) {
    Values v;
    const absl::Status status = Parse(c.args, &v);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.mention)) << c.args[0];
  }
}

TEST(FlagSetTest, LastValueWinsWhenAsked) {
  FlagSet set("prog");
  Values v;
  Define(&v, &set);
  set.LastValueWins();
  bool help = false;
  ASSERT_TRUE(set.Parse({"--count=2", "--count=3"}, &help).ok());
  EXPECT_EQ(v.count, 3);
}

TEST(FlagSetTest, StringChecksNameTheValue) {
  FlagSet set("prog");
  Values v;
  Define(&v, &set);
  set.AddStringCheck("text", [](absl::string_view value) {
    return value == "ok" ? absl::OkStatus()
                         : absl::InvalidArgumentError(absl::StrCat("--text=", value, ": not ok"));
  });
  bool help = false;
  EXPECT_THAT(std::string(set.Parse({"--text=nope"}, &help).message()),
              HasSubstr("--text=nope: not ok"));
  EXPECT_EQ(v.text, "default");
}

TEST(FlagSetTest, HelpIsGeneratedAndWinsOverErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--help"}, {"-h"}, {"--count=oops", "--help"}, {"--bogus", "-h"}}) {
    FlagSet set("prog", "Does things.");
    Values v;
    Define(&v, &set);
    set.SetFooter("More words.");
    bool help = false;
    ASSERT_TRUE(set.Parse(args, &help).ok()) << args[0];
    EXPECT_TRUE(help) << args[0];
    const std::string text = set.Help();
    for (const char* entry :
         {"prog", "Does things.", "--text=default", "--count=5", "--ratio=0.25", "--on ",
          "--item=TEXT", "(repeatable)", "an integer in [1, 100]", "--help", "More words."}) {
      EXPECT_THAT(text, HasSubstr(entry));
    }
  }
}

TEST(FlagSetTest, Commands) {
  FlagSet set("tool");
  std::string target = "here";
  set.AddString("target", &target, "where");
  int64_t dim = 0;
  std::vector<std::string> args;
  FlagSet* create = set.AddCommand("create", "make one");
  create->AddInt("dim", &dim, 1, 10, "size");
  create->AddPositionals("ID", &args, "its id");
  FlagSet* list = set.AddCommand("list", "list them");
  bool help = false;
  // The program's flags go before or after the command; the command's after it.
  const absl::Status status = set.Parse({"create", "x", "--dim", "3", "--target=there"}, &help);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(create->Chosen());
  EXPECT_FALSE(list->Chosen());
  EXPECT_EQ(dim, 3);
  EXPECT_EQ(target, "there");
  EXPECT_THAT(args, ElementsAre("x"));
  EXPECT_TRUE(create->Given("dim"));

  FlagSet other("tool");
  FlagSet* other_list = other.AddCommand("list", "list them");
  int64_t other_dim = 0;
  other.AddCommand("create", "make one")->AddInt("dim", &other_dim, 1, 10, "size");
  EXPECT_THAT(std::string(other.Parse({"list", "--dim=3"}, &help).message()),
              HasSubstr("unknown flag --dim"));
  EXPECT_TRUE(other_list->Chosen());
}

TEST(FlagSetTest, CommandHelpDescribesTheCommand) {
  FlagSet set("tool");
  int64_t dim = 0;
  set.AddCommand("create", "make one")->AddInt("dim", &dim, 1, 10, "size of it");
  bool help = false;
  ASSERT_TRUE(set.Parse({"create", "--help"}, &help).ok());
  EXPECT_TRUE(help);
  EXPECT_THAT(set.Help(), HasSubstr("--dim=0"));
  EXPECT_THAT(set.Help(), HasSubstr("size of it"));
}

TEST(FlagSetTest, ArgvForm) {
  Values v;
  FlagSet set("prog");
  Define(&v, &set);
  const char* argv[] = {"prog", "--count", "9"};
  bool help = false;
  ASSERT_TRUE(set.Parse(3, argv, &help).ok());
  EXPECT_EQ(v.count, 9);
}

}  // namespace
}  // namespace fisherd::common
