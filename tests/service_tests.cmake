# Service tests: a real fisherd (FisherServer) on 127.0.0.1 port 0 in-process, reached
# through a real channel, plus unit tests of the server layer's pieces.
add_executable(service_test
  service/session_crud_test.cc
  service/add_scores_test.cc
  service/stream_scores_test.cc
  service/step_test.cc
  service/get_fisher_test.cc
  service/server_test.cc
  service/batch_decoder_test.cc
  service/flags_test.cc
  service/layered_test.cc
  service/routing_metadata_test.cc
  service/metrics_service_test.cc)
target_link_libraries(service_test PRIVATE
  fisherd_server fisherd_client fisherd_proto GTest::gtest_main GTest::gmock)
gtest_discover_tests(service_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS service)
