# End-to-end suites: the real binaries over loopback. The C++ suite drives fisherd
# through the client library and fisherctl; the Python suite is a client written from
# the proto alone (stubs generated at test time), as an outside user would write it.
add_executable(e2e_test
  e2e/e2e_test.cc
  e2e/layered_e2e_test.cc
  e2e/process.cc
  e2e/sharded_session_test.cc
  e2e/tcp_proxy.cc)
target_compile_definitions(e2e_test PRIVATE
  FISHERD_BIN="$<TARGET_FILE:fisherd>"
  FISHERCTL_BIN="$<TARGET_FILE:fisherctl>")
target_link_libraries(e2e_test PRIVATE fisherd_client Eigen3::Eigen GTest::gtest_main GTest::gmock)
add_dependencies(e2e_test fisherd fisherctl)
# The layered tests' eigendecomposition oracle and 30M-parameter step are compute-bound and
# take 2-5 minutes each under ThreadSanitizer on two cores, past the usual 300 s limit.
if(FISHERD_SANITIZE MATCHES "thread")
  set(_e2e_timeout 900)
else()
  set(_e2e_timeout 300)
endif()
gtest_discover_tests(e2e_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT ${_e2e_timeout} LABELS e2e)

find_program(DEBIAN_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
add_test(NAME python_proto_client
  COMMAND ${DEBIAN_PYTHON3} -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/e2e/python)
set_tests_properties(python_proto_client PROPERTIES
  ENVIRONMENT "FISHERD_BIN=$<TARGET_FILE:fisherd>" TIMEOUT 300 LABELS "e2e;python")

# Durable sessions from the clients' side: fisherd --data-dir on a fixed port is
# SIGKILLed mid-stream and restarted on the same port and directory; the C++
# ScoreStreamer (and, in the Python client suite, stream_scores) must resume the worker's
# sequence so that every row counts exactly once.
add_executable(durable_resume_test e2e/durable_resume_test.cc)
target_compile_definitions(durable_resume_test PRIVATE FISHERD_BIN="$<TARGET_FILE:fisherd>")
target_link_libraries(durable_resume_test PRIVATE fisherd_client Eigen3::Eigen GTest::gtest_main GTest::gmock)
add_dependencies(durable_resume_test fisherd)
gtest_discover_tests(durable_resume_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120 LABELS e2e)

# Prometheus metrics from the outside: fisherd --metrics-listen, a known workload through
# the client library, GET /metrics with cpp-httplib's client, and `promtool check
# metrics`. promtool comes from Debian's prometheus package (scripts/install-deps.sh);
# without it the promtool test fails, saying so, rather than passing unchecked.
find_program(PROMTOOL promtool)
if(NOT PROMTOOL)
  message(WARNING "promtool not found (Debian package prometheus): "
                  "metrics.MetricsEndToEndTest.PromtoolAcceptsTheExposition will fail")
  set(PROMTOOL "")
endif()
add_executable(metrics_e2e_test e2e/metrics_e2e_test.cc e2e/process.cc)
target_compile_definitions(metrics_e2e_test PRIVATE
  FISHERD_BIN="$<TARGET_FILE:fisherd>"
  FISHERCTL_BIN="$<TARGET_FILE:fisherctl>"
  PROMTOOL_BIN="${PROMTOOL}")
target_link_libraries(metrics_e2e_test PRIVATE
  fisherd_client PkgConfig::CPP_HTTPLIB GTest::gtest_main GTest::gmock)
add_dependencies(metrics_e2e_test fisherd fisherctl)
gtest_discover_tests(metrics_e2e_test DISCOVERY_TIMEOUT 60 TEST_PREFIX "metrics."
  PROPERTIES TIMEOUT 300 LABELS e2e)
