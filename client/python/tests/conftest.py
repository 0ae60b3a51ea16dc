"""Fixtures: the real `fisherd` binary on a loopback port (FISHERD_BIN, default
build/server/fisherd) and a fisherd.Client connected to it.

The package is imported from the source tree (client/python on sys.path), which
generates its stubs on first import; the install test checks the pip route."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "client" / "python"))

import fisherd  # noqa: E402


def fisherd_binary():
    return os.environ.get("FISHERD_BIN", str(REPO / "build" / "server" / "fisherd"))


def start_fisherd(*flags):
    """Starts fisherd on 127.0.0.1:0; returns (process, "host:port")."""
    process = subprocess.Popen([fisherd_binary(), "--listen=127.0.0.1:0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.match(r"fisherd listening on (\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise RuntimeError("fisherd did not print its address")


def stop_fisherd(process):
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def server():
    process, address = start_fisherd("--max-sessions=64")
    yield address
    stop_fisherd(process)


@pytest.fixture(scope="session")
def replicas():
    """Three independent fisherd processes (the replicas of a sharded session): their
    "host:port" addresses."""
    started = []
    try:
        for _ in range(3):
            started.append(start_fisherd("--max-sessions=64"))
        yield [address for _, address in started]
    finally:
        for process, _ in started:
            stop_fisherd(process)


@pytest.fixture
def client(server):
    with fisherd.Client(server, wait_for_ready=True, timeout=20) as c:
        yield c


_counter = iter(range(1, 1 << 30))


@pytest.fixture
def new_session(client):
    """new_session(dim, **config) -> a fresh session's name."""
    def make(dim, **config):
        return client.create_session(f"pyc-{os.getpid()}-{next(_counter)}", dim, **config)
    return make
