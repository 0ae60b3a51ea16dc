// The one conversion each way between absl::Status and grpc::Status.
#include "common/grpc_status.h"

#include "gtest/gtest.h"

namespace fisherd::common {
namespace {

TEST(GrpcStatusTest, EveryCodeAndItsMessageCrossBothWays) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status status(static_cast<absl::StatusCode>(code), "why");
    const grpc::Status wire = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(wire.error_code()), code);
    EXPECT_EQ(wire.error_message(), "why");
    EXPECT_EQ(FromGrpcStatus(wire), status);
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK, "Call").ok());
}

TEST(GrpcStatusTest, ContextPrefixesTheMessage) {
  const absl::Status status =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "no session"), "GetSession");
  EXPECT_EQ(status, absl::NotFoundError("GetSession: no session"));
}

// absl::StatusCode has a fixed underlying type, so a code from a newer abseil is a valid
// value this table does not know. grpc::StatusCode has none: a value outside its
// enumerators cannot even be formed without undefined behaviour (UBSan stops at the load
// in grpc::Status::error_code()), so only the absl side is tested with one.
TEST(GrpcStatusTest, UnknownCodesBecomeUnknown) {
  EXPECT_EQ(ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(99), "m")).error_code(),
            grpc::StatusCode::UNKNOWN);
}

}  // namespace
}  // namespace fisherd::common
