"""Sessions routed over three fisherd replicas by HAProxy, end to end.

Three real fisherd processes, each on its own data directory, behind the real HAProxy
(Debian's haproxy 2.6) configured by docker/haproxy/haproxy.cfg as
docker/haproxy/loopback-cluster.sh renders it. Every call goes through the Python client,
which sends the x-fisherd-session metadata that HAProxy hashes.

The rows are small integers (scores in -3..3, weight 1), so every sum fisherd keeps is an
exact integer in float64, whatever the order of the additions: the Fisher estimates and
the steps through the proxy must equal the references and the direct calls exactly, and a
restarted replica must give back exactly what it had acknowledged.
"""
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import json
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import fisherd  # noqa: E402

CLUSTER_SCRIPT = REPO / "docker" / "haproxy" / "loopback-cluster.sh"
DIM = 5
SESSIONS = 30


def fisherd_binary():
    return os.environ.get("FISHERD_BIN", str(REPO / "build" / "server" / "fisherd"))


def fisherctl_binary():
    return os.environ.get("FISHERCTL_BIN", str(REPO / "build" / "client" / "fisherctl"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(process, pattern, timeout=30.0):
    """Reads the process's stdout until a line matches; returns the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(pattern, line)
        if found:
            return found
    process.kill()
    raise AssertionError(f"no line matching {pattern!r} from {process.args}")


class Replica:
    def __init__(self, index, data_dir):
        self.index = index
        self.name = f"replica-{index}"
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [fisherd_binary(), f"--listen={self.address}", f"--data-dir={self.data_dir}",
             f"--replica-name={self.name}", "--drain-seconds=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_for_line(self.process, r"fisherd listening on")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


class Cluster:
    def __init__(self, tmp_path):
        self.replicas = [Replica(k, tmp_path / f"replica-{k}") for k in range(3)]
        self.proxy_address = f"127.0.0.1:{free_port()}"
        self.config = tmp_path / "haproxy.cfg"
        self.haproxy = None

    def start(self):
        for replica in self.replicas:
            replica.start()
        config = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "config", self.proxy_address,
             *[r.address for r in self.replicas]],
            check=True, capture_output=True, text=True).stdout
        self.config.write_text(config)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(self.config)], check=True)
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # HAProxy binds before it serves; a health call through it proves the route.
        with fisherd.Client(self.proxy_address, wait_for_ready=True, timeout=20) as c:
            c.wait_until_ready(timeout=20)

    def stop(self):
        if self.haproxy:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=10)
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def integer_rows(rng, rows):
    return rng.integers(-3, 4, size=(rows, DIM)).astype(np.float64)


def reference_fisher(rows):
    stacked = np.concatenate(rows)
    return stacked.T @ stacked / len(stacked)


def where_sessions_live(cluster):
    homes = {}
    for replica in cluster.replicas:
        with fisherd.Client(replica.address, timeout=10) as direct:
            for session in direct.list_sessions():
                homes.setdefault(session.name, []).append(replica.index)
    return homes


def test_sessions_live_on_one_replica_and_survive_its_crash(cluster):
    rng = np.random.default_rng(7)
    ids = [f"job-{i}" for i in range(SESSIONS)]
    streamed = {i: [] for i in ids}
    # impatient: a stream to a dead replica fails at once instead of being retried for
    # seconds (the client's reconnect policy, right for training, slow for a test).
    with fisherd.Client(cluster.proxy_address, timeout=20) as proxy, \
            fisherd.Client(cluster.proxy_address, timeout=20, max_retries=0) as impatient:
        for i in ids:
            proxy.create_session(i, dim=DIM, damping=0.5)
            rows = integer_rows(rng, 16)
            proxy.stream_scores(i, rows, worker_id="w")
            streamed[i].append(rows)

        # Each session on exactly one replica, and all three replicas used.
        homes = where_sessions_live(cluster)
        assert sorted(homes) == sorted(f"sessions/{i}" for i in ids)
        assert all(len(h) == 1 for h in homes.values()), homes
        owner = {i: homes[f"sessions/{i}"][0] for i in ids}
        assert set(owner.values()) == {0, 1, 2}, owner

        # The same numbers through the proxy as from the owning replica directly: the
        # statistics (exact integers, see the module docstring) and a step that leaves
        # them unchanged (skip_decay), bit for bit.
        gradient = np.arange(1.0, DIM + 1.0)
        for i in ids:
            with fisherd.Client(cluster.replicas[owner[i]].address, timeout=20) as direct:
                via_proxy = proxy.get_fisher(i).matrix
                np.testing.assert_array_equal(via_proxy, direct.get_fisher(i).matrix)
                np.testing.assert_array_equal(via_proxy, reference_fisher(streamed[i]))
                a = proxy.step(i, gradient, kl_budget=0.01, skip_decay=True)
                b = direct.step(i, gradient, kl_budget=0.01, skip_decay=True)
                np.testing.assert_array_equal(a.update, b.update)
                assert a.eta == b.eta and a.predicted_kl == b.predicted_kl

        # A replica asked for a session it does not hold names itself.
        stranger = next(i for i in ids if owner[i] != 0)
        with fisherd.Client(cluster.replicas[0].address, timeout=10) as direct:
            with pytest.raises(fisherd.FisherdError) as missing:
                direct.get_session(stranger)
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            assert 'on replica "replica-0"' in str(missing.value)

        # SIGKILL replica 1: exactly its sessions fail, with UNAVAILABLE; the others go on.
        # 16 more rows keep W a power of two, so F = M / W stays exact.
        cluster.replicas[1].kill()
        for i in ids:
            rows = integer_rows(rng, 16)
            if owner[i] == 1:
                with pytest.raises(fisherd.FisherdError) as down:
                    impatient.stream_scores(i, rows, worker_id="w")
                assert down.value.code == grpc.StatusCode.UNAVAILABLE, down.value
                assert "replica-1" in down.value.message, down.value
                with pytest.raises(fisherd.FisherdError) as down:
                    proxy.step(i, gradient, learning_rate=0.1, skip_decay=True)
                assert down.value.code == grpc.StatusCode.UNAVAILABLE, down.value
            else:
                proxy.stream_scores(i, rows, worker_id="w")
                streamed[i].append(rows)
                proxy.step(i, gradient, learning_rate=0.1, skip_decay=True)

        # Restarted on its data directory: its sessions are back through the proxy, with
        # every acknowledged row and nothing else.
        cluster.replicas[1].start()
        deadline = time.monotonic() + 20
        for i in ids:
            while True:
                try:
                    fisher = proxy.get_fisher(i)
                    break
                except fisherd.FisherdError as error:
                    # HAProxy may still hold the dead connection for a moment.
                    if error.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            np.testing.assert_array_equal(fisher.matrix, reference_fisher(streamed[i]))
            assert fisher.summary.sample_count == sum(len(r) for r in streamed[i])
        assert where_sessions_live(cluster) == homes


def prometheus_query(address, query):
    """The value of an instant query with one result through Prometheus' HTTP API, or
    None while it has no result."""
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as answer:
        result = json.load(answer)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for_prometheus(address, query, expected, timeout=60.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = prometheus_query(address, query)
        except OSError:
            value = None  # not serving yet
        if value == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus: {query} = {value}, expected {expected}")


def test_the_loopback_script_serves_and_fisherctl_lists_every_replica(tmp_path):
    port = free_port()
    script = subprocess.Popen(
        ["bash", str(CLUSTER_SCRIPT), "start", "2", "--port", str(port), "--dir",
         str(tmp_path), "--fisherd", fisherd_binary()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        found = wait_for_line(script, r"proxy (\S+), replicas (\S+) (\S+),")
        proxy_address, replicas = found.group(1), [found.group(2), found.group(3)]
        with fisherd.Client(proxy_address, wait_for_ready=True, timeout=20) as proxy:
            for i in range(6):
                proxy.create_session(f"listed-{i}", dim=2)
        listed = subprocess.run(
            [fisherctl_binary(), "list", *[f"--replica={r}" for r in replicas]],
            capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        lines = [line.split() for line in listed.stdout.splitlines() if "sessions/" in line]
        assert sorted(words[1] for words in lines) == [f"sessions/listed-{i}" for i in range(6)]
        assert {words[0] for words in lines} <= set(replicas)
        assert "6 sessions on 2 replicas" in listed.stdout

        # A real Prometheus server (Debian's) scraping both replicas with the
        # configuration the script wrote sees both up and the 6 sessions and their
        # CreateSession calls, summed over the replicas.
        prometheus_address = f"127.0.0.1:{free_port()}"
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--web.listen-address={prometheus_address}",
             f"--storage.tsdb.path={tmp_path / 'prometheus-data'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_prometheus(prometheus_address, 'count(up{job="fisherd"} == 1)', 2.0)
            wait_for_prometheus(prometheus_address, "sum(fisherd_sessions)", 6.0)
            wait_for_prometheus(
                prometheus_address,
                'sum(fisherd_grpc_calls_total{method="/fisherd.v1.FisherService/CreateSession",'
                'code="OK"})', 6.0)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
    finally:
        os.killpg(script.pid, signal.SIGTERM)
        script.wait(timeout=30)
    # Everything it started is gone: the proxy's port refuses connections.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
