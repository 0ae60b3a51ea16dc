add_executable(core_test
  core/options_test.cc
  core/score_batch_test.cc
  core/dense_statistics_test.cc
  core/low_rank_start_test.cc
  core/diagonal_statistics_test.cc
  core/session_test.cc
  core/low_rank_statistics_test.cc
  core/kronecker_statistics_test.cc
  core/layered_session_test.cc
  core/decay_underflow_test.cc
  core/state_round_trip_test.cc)
target_link_libraries(core_test PRIVATE fisherd_core GTest::gtest_main GTest::gmock)
gtest_discover_tests(core_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS unit)
