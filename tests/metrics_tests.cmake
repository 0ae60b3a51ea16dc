# The metrics registry and the Prometheus text format (metrics/), in-process: exact
# exposition text, label escaping, histogram buckets, concurrent updates. The "metrics."
# prefix lets `ctest -R metrics` pick these together with the end-to-end metrics tests.
add_executable(metrics_test
  metrics/exposition_test.cc
  metrics/metrics_test.cc)
target_link_libraries(metrics_test PRIVATE fisherd_metrics GTest::gtest_main GTest::gmock)
gtest_discover_tests(metrics_test DISCOVERY_TIMEOUT 60 TEST_PREFIX "metrics." PROPERTIES LABELS unit)
