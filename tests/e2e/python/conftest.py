"""Fixtures for end-to-end tests written from the proto alone, in Python.

Stubs are generated from proto/ into a temporary directory at test time (Debian's
protoc and grpc_python_plugin), so these tests see exactly what an outside client would: the contract.
The server is the real `fisherd` binary on a loopback port; FISHERD_BIN names it.
"""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import grpc
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def fisher_pb(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    proto_root = REPO / "proto"
    # Debian's protoc and grpc_python_plugin (python3-grpc-tools bundles a protoc too
    # old for proto3 `optional`).
    subprocess.run([
        "protoc", f"--proto_path={proto_root}", f"--python_out={out}",
        f"--grpc_python_out={out}", "--plugin=protoc-gen-grpc_python=" +
        shutil.which("grpc_python_plugin"), str(proto_root / "fisherd/v1/fisher.proto"),
    ], check=True)
    sys.path.insert(0, str(out))
    from fisherd.v1 import fisher_pb2, fisher_pb2_grpc  # noqa: E402
    return fisher_pb2, fisher_pb2_grpc


def start_fisherd(*flags):
    binary = os.environ.get("FISHERD_BIN", str(REPO / "build/server/fisherd"))
    process = subprocess.Popen([binary, "--listen=127.0.0.1:0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.match(r"fisherd listening on (\S+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    raise RuntimeError("fisherd did not report its address")


@pytest.fixture(scope="module")
def server():
    process, address = start_fisherd("--max-sessions=32")
    yield address
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture
def stub(server, fisher_pb):
    _, fisher_pb2_grpc = fisher_pb
    with grpc.insecure_channel(server) as channel:
        yield fisher_pb2_grpc.FisherServiceStub(channel)
