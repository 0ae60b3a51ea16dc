# The deployment artifacts under docker/. docker_smoke starts its own Docker engine,
# builds the image from this checkout, runs it, the compose file, and the cluster compose
# file's replicas behind HAProxy (see tests/docker/docker_smoke.sh); it compiles the
# project once more inside the image, so it takes both processors and has a generous
# timeout. k8s_manifests validates docker/k8s/ against the Kubernetes schema without a
# cluster, and its HAProxy ConfigMap against docker/haproxy/haproxy.cfg.
add_test(NAME docker_smoke
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/docker/docker_smoke.sh ${CMAKE_SOURCE_DIR}
          $<TARGET_FILE:fisherctl>)
set_tests_properties(docker_smoke PROPERTIES TIMEOUT 1500 PROCESSORS 2 LABELS "docker;slow")
add_test(NAME k8s_manifests
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/docker/k8s_validate.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(k8s_manifests PROPERTIES TIMEOUT 300 LABELS docker)
# docker/prometheus.yml, the example scrape configuration for fisherd replicas, through
# Prometheus' own checker (PROMTOOL: found in e2e_tests.cmake; missing, the test fails).
if(PROMTOOL)
  add_test(NAME metrics_prometheus_config
    COMMAND ${PROMTOOL} check config ${CMAKE_SOURCE_DIR}/docker/prometheus.yml)
else()
  add_test(NAME metrics_prometheus_config
    COMMAND sh -c "echo 'promtool not found: install the Debian package prometheus' >&2; exit 1")
endif()
set_tests_properties(metrics_prometheus_config PROPERTIES TIMEOUT 60 LABELS docker)
