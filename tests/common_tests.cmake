# What server and clients share (common/): the flag set every program declares its
# flags on, the status conversions and the file reader; and the client tools'
# connection flags, declared on that flag set.
add_executable(common_test
  common/flag_set_test.cc
  common/grpc_status_test.cc
  common/read_file_test.cc)
target_link_libraries(common_test PRIVATE
  fisherd_common fisherd_grpc_status GTest::gtest_main GTest::gmock)
gtest_discover_tests(common_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS unit)

add_executable(client_flags_test common/connection_flags_test.cc)
target_link_libraries(client_flags_test PRIVATE
  fisherd_cli_flags GTest::gtest_main GTest::gmock)
gtest_discover_tests(client_flags_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS unit)
