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
  TIMEOUT 600 LABELS "e2e;python")

# The Fashion-MNIST example (issue: K-FAC through fisherd against SGD and Adam), one epoch
# on 2048 images for both models and all three methods: it must run end to end against a
# real fisherd (the full comparison is a manual run, see README). The pilots' options
# (weight averaging, weight decay, the training-set loss) ride along so their code runs.
add_test(NAME fashion_mnist_smoke
  COMMAND ${DEBIAN_PYTHON3} ${CMAKE_SOURCE_DIR}/client/python/examples/fashion_mnist.py
          --subset=2048 --epochs=1 --models=mlp,cnn --methods=kfac,sgd,adam
          --sgd-lr=0.05 --adam-lr=1e-3 --kfac-damping=1e-2 --kfac-kl-budget=1e-3
          --average=0.9 --train-loss-images=512 --sgd-weight-decay=1e-4
          --adam-weight-decay=1e-4
          --fisherd-bin=$<TARGET_FILE:fisherd>
          --plot=${CMAKE_CURRENT_BINARY_DIR}/fashion_mnist_smoke.png)
set_tests_properties(fashion_mnist_smoke PROPERTIES
  ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1" TIMEOUT 600 LABELS "e2e;python;slow")
