# Past one machine: three fisherd replicas behind the real HAProxy (Debian's haproxy 2.6),
# configured by docker/haproxy/haproxy.cfg through docker/haproxy/loopback-cluster.sh, and
# driven by the Python client. Needs haproxy on PATH (scripts/install-deps.sh installs it);
# without it the test fails rather than skips.
find_program(DEBIAN_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
add_test(NAME cluster_haproxy
  COMMAND ${DEBIAN_PYTHON3} -m pytest -q -p no:cacheprovider
          ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_haproxy_cluster.py)
set_tests_properties(cluster_haproxy PROPERTIES
  ENVIRONMENT "FISHERD_BIN=$<TARGET_FILE:fisherd>;FISHERCTL_BIN=$<TARGET_FILE:fisherctl>;PYTHONDONTWRITEBYTECODE=1"
  LABELS "e2e;python"
  TIMEOUT 300)
