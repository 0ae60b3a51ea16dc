# The deployment artifacts under docker/. docker_smoke starts its own Docker engine,
# builds the image from this checkout, runs it and the compose file (see
# tests/docker/docker_smoke.sh); it compiles the project once more inside the image, so
# it takes both processors and has a generous timeout. k8s_manifests validates
# docker/k8s/ against the Kubernetes schema without a cluster.
add_test(NAME docker_smoke
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/docker/docker_smoke.sh ${CMAKE_SOURCE_DIR}
          $<TARGET_FILE:fisherctl>)
set_tests_properties(docker_smoke PROPERTIES TIMEOUT 1500 PROCESSORS 2 LABELS "docker;slow")
add_test(NAME k8s_manifests
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/docker/k8s_validate.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(k8s_manifests PROPERTIES TIMEOUT 300 LABELS docker)
