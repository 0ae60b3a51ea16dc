# Durable sessions (fisherd --data-dir) end to end: the real fisherd killed with SIGKILL
# at random moments and at injected crash points (FISHERD_FAULT), its log cut and its
# bits flipped, its directory made unwritable or its disk full; after each restart the
# recovered statistics are compared with a float64 reference of exactly the batches the
# server says it holds, and every acknowledged batch must be among them. Python (Debian's
# /usr/bin/python3 with numpy, grpcio and pytest), one pytest process per file; the
# helpers are tests/durability/harness.py. The full-disk test mounts a tmpfs (root) and
# skips where that is not permitted; the read-only test drops privileges with setpriv.
find_program(DEBIAN_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
foreach(suite crash faults corruption environment layered_recovery retention)
  add_test(NAME durability_${suite}
    COMMAND ${DEBIAN_PYTHON3} -m pytest -q -s -p no:cacheprovider
            ${CMAKE_CURRENT_SOURCE_DIR}/durability/test_${suite}.py)
  set_tests_properties(durability_${suite} PROPERTIES
    ENVIRONMENT "FISHERD_BIN=$<TARGET_FILE:fisherd>;PYTHONDONTWRITEBYTECODE=1"
    LABELS "e2e;durability;python"
    TIMEOUT 300)
endforeach()
# The two that kill fisherd hundreds of times take about 40 s each.
set_property(TEST durability_crash durability_corruption APPEND PROPERTY LABELS slow)
