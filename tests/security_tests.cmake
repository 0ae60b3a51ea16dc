# Transport security and the bearer token end to end: the real fisherd with TLS, mutual
# TLS and --auth-token-file, certificates made at test time with openssl.
add_executable(security_test
  security/security_test.cc
  e2e/process.cc
  e2e/tcp_proxy.cc)
target_compile_definitions(security_test PRIVATE
  FISHERD_BIN="$<TARGET_FILE:fisherd>"
  FISHERCTL_BIN="$<TARGET_FILE:fisherctl>")
target_link_libraries(security_test PRIVATE
  fisherd_client fisherd_server GTest::gtest_main GTest::gmock)
add_dependencies(security_test fisherd fisherctl)
gtest_discover_tests(security_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300
  LABELS e2e)
