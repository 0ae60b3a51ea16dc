// The one whole-file reader of the server and the clients.
#include "common/read_file.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fisherd::common {
namespace {

using ::testing::HasSubstr;

TEST(ReadFileTest, ReadsBytesAsTheyAre) {
  const std::string path = ::testing::TempDir() + "/read_file_test." + std::to_string(getpid());
  const std::string contents("line\n\0binary\r\n", 14);
  std::ofstream(path, std::ios::binary) << contents;
  absl::StatusOr<std::string> read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);
  std::remove(path.c_str());
}

TEST(ReadFileTest, MissingFileIsNotFoundNamingThePath) {
  absl::StatusOr<std::string> read = ReadFileToString("/nonexistent/fisherd-file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("/nonexistent/fisherd-file"));
}

}  // namespace
}  // namespace fisherd::common
