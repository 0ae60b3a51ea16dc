# Storage tests: the record frame and its reader, snapshot-style files, the journal with
# group commit, crashes at the fault points (the binary re-runs itself as the child that
# is killed), and a full or read-only disk on a tiny tmpfs (skipped without CAP_SYS_ADMIN).
add_executable(storage_test
  storage/test_util.cc
  storage/record_format_test.cc
  storage/file_util_test.cc
  storage/journal_test.cc
  storage/journal_fault_test.cc
  storage/disk_full_test.cc)
target_link_libraries(storage_test PRIVATE
  fisherd_storage PkgConfig::XXHASH GTest::gtest_main GTest::gmock)
gtest_discover_tests(storage_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS unit)
