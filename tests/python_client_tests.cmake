# The Python client package (client/python) against the real fisherd over loopback: its
# own pytest process, apart from the proto-only suite (both define a `fisherd` package).
# The package is imported from the source tree, so the first import generates its stubs
# into client/python/fisherd/v1/ (git-ignored); one test also pip-installs it into a venv.
find_program(DEBIAN_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
add_test(NAME python_client
  COMMAND ${DEBIAN_PYTHON3} -m pytest -q -p no:cacheprovider
          ${CMAKE_SOURCE_DIR}/client/python/tests)
set_tests_properties(python_client PROPERTIES
  ENVIRONMENT "FISHERD_BIN=$<TARGET_FILE:fisherd>;PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 600)
