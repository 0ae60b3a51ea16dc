"""Durable sessions from the Python client's side: the real fisherd with --data-dir on a
fixed loopback port is SIGKILLed while stream_scores runs (in a thread) and restarted on
the same port and directory. stream_scores must resume by itself (reconnect, resend what
was not acknowledged; the server deduplicates against the recovered per-worker
sequence), and clients that stream for the same worker after a restart, one that lived
through it and one created afresh, must continue after the recovered sequence. Every row
must count exactly once: sample count, weight sum, the worker's sequence and F are
compared with a float64 reference computed here.

Every Client here has a connection of its own (grpc.use_local_subchannel_pool), as in a
separate process: gRPC shares connections between the channels of one process, so a
Client created right after a restart could otherwise inherit the connection to the
killed server before gRPC noticed it is dead, and its first unary call (get_session)
would fail with UNAVAILABLE.
"""
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

import fisherd

REPO = pathlib.Path(__file__).resolve().parents[3]
WORKER = "w1"
DIM = 24
ROWS_PER_BATCH = 8


def fisherd_binary():
    return os.environ.get("FISHERD_BIN", str(REPO / "build" / "server" / "fisherd"))


def free_port():
    """A free loopback port: bind port 0, read it, close. fisherd binds it afterwards
    (gRPC sets SO_REUSEADDR, so a restart can take it again after a SIGKILL)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DurableFisherd:
    """fisherd --listen=127.0.0.1:PORT --data-dir=DIR, started and SIGKILLed any number
    of times on the same port and directory; each start's output goes to a file."""

    def __init__(self, port, data_dir, log_dir):
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.process = None
        self.starts = 0

    def start(self):
        """Starts it and waits for 'fisherd listening on' (printed once recovery is
        done). A few attempts: right after a SIGKILL the port may briefly still be held."""
        for _ in range(5):
            self.starts += 1
            self.log = self.log_dir / f"fisherd-{self.starts}.log"
            with open(self.log, "wb") as out:
                self.process = subprocess.Popen(
                    [fisherd_binary(), f"--listen={self.address}",
                     f"--data-dir={self.data_dir}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if "fisherd listening on " in self.output():
                    return self
                if self.process.poll() is not None:
                    break
                time.sleep(0.005)
            self.kill()
            time.sleep(0.2)
        raise AssertionError(f"fisherd did not start on {self.address}:\n{self.output()}")

    def output(self):
        return self.log.read_text(errors="replace")

    def kill(self):
        """SIGKILL: no drain, no final snapshot; only what was fdatasync'd survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def restart(self):
        self.kill()
        return self.start()

    def all_output(self):
        return "\n".join(f"--- start {n} ---\n" + (self.log_dir / f"fisherd-{n}.log")
                         .read_text(errors="replace") for n in range(1, self.starts + 1))


@pytest.fixture
def durable_server(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = DurableFisherd(free_port(), data_dir, tmp_path)
    server.start()
    yield server
    server.kill()


def connect(server):
    """A Client with a connection of its own (see the module docstring)."""
    return fisherd.Client(server.address, wait_for_ready=True, timeout=20,
                          options=[("grpc.use_local_subchannel_pool", 1)])


def workload(rows, seed):
    """float32 normal scores and weights in {0.25, 0.5, ..., 2}: a weight has at most 3
    significant bits and a float32 score 24, so every w s_i s_j is exact in float64 and
    every weight sum is exact whatever the order."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((rows, DIM)).astype(np.float32)
    weights = (0.25 * rng.integers(1, 9, size=rows)).astype(np.float32)
    return scores, weights


def reference(*parts):
    """(sum_k w_k s_k s_k^T, W, rows) in float64 over all rows of `parts`."""
    m = np.zeros((DIM, DIM))
    w = 0.0
    rows = 0
    for scores, weights in parts:
        s = scores.astype(np.float64)
        wk = weights.astype(np.float64)
        m += (s * wk[:, None]).T @ s
        w += wk.sum()
        rows += s.shape[0]
    return m, w, rows


def check_statistics(client, name, parts, batches):
    """Every row of `parts` counted once, the worker at `batches`, F equal to the
    reference."""
    m, w, rows = reference(*parts)
    session = client.get_session(name)
    assert session.sample_count == rows
    assert session.worker_sequences == {WORKER: batches}
    assert session.weight_sum == w  # exact: sums of multiples of 1/4
    expected = m / w
    got = client.get_fisher(name).matrix
    # Relative 1e-12 (Frobenius): the server accumulates the very same float32 scores and
    # weights in float64, and each product w s_i s_j is exact there (3 + 24 + 24
    # significant bits), so the two differ only by the rounding of their sums, taken in
    # another order (the server's rank-8 batch updates, and a snapshot/replay split,
    # against NumPy's one product here): about n 2^-53 ~ 1e-12 at worst for n ~ 20000
    # terms, far less in practice, while one lost or doubled batch of 8 rows would move F
    # by ~4e-4.
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert error < 1e-12, f"relative error {error}"


def test_stream_scores_resumes_across_sigkill_and_restart(durable_server):
    """One worker's stream_scores call (2400 batches, in a thread) while fisherd is
    SIGKILLed part way and restarted 0.3 s later on the same port and directory: the
    call must return normally, having reconnected and resent, and every row counts once."""
    batches = 2400
    scores, weights = workload(batches * ROWS_PER_BATCH, seed=1)
    with connect(durable_server) as control:
        name = control.create_session("resume", DIM)

    outcome = {}
    worker = connect(durable_server)

    def stream():
        try:
            outcome["result"] = worker.stream_scores(name, scores, weights, worker_id=WORKER,
                                                     rows_per_batch=ROWS_PER_BATCH)
        except BaseException as error:  # reported by the main thread
            outcome["error"] = error

    thread = threading.Thread(target=stream, daemon=True)
    started = time.monotonic()
    thread.start()
    # Kill once a quarter of the batches is applied (the stream is then mid-way).
    with connect(durable_server) as control:
        seen = 0
        while seen < batches // 4 and thread.is_alive():
            seen = control.get_session(name).worker_sequences.get(WORKER, 0)
            time.sleep(0.002)
    assert thread.is_alive() and seen < batches, (
        f"the stream ended (sequence {seen}) before the kill; make it longer")
    durable_server.kill()
    time.sleep(0.3)  # the worker notices and starts retrying with backoff meanwhile
    durable_server.start()
    thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), "stream_scores did not return after the restart"
    worker.close()
    assert "error" not in outcome, f"stream_scores failed: {outcome.get('error')!r}"
    result = outcome["result"]
    print(f"killed at applied sequence ~{seen}; {result}; {elapsed:.2f} s")
    assert "recovered 1 session(s)" in durable_server.output()

    assert result.rows == scores.shape[0]
    assert result.batches == batches
    assert result.sequence == batches
    assert result.sample_count == scores.shape[0]
    assert result.streams_opened >= 2        # the stream broke and was reopened
    assert result.batches_resent >= 1        # with unacknowledged batches resent
    with connect(durable_server) as control:
        check_statistics(control, name, [(scores, weights)], batches)


def test_clients_after_restart_continue_the_recovered_sequence(durable_server):
    """After restarts, a Client that lived through one (it remembers the worker's next
    sequence) and a new Client (fresh state: it asks the server) both continue the
    worker's recovered sequence; nothing is doubled or lost."""
    first, second, third = workload(300 * 8, 2), workload(100 * 8, 3), workload(150 * 8, 4)
    with connect(durable_server) as control:
        name = control.create_session("resume", DIM)

    survivor = connect(durable_server)
    result = survivor.stream_scores(name, *first, worker_id=WORKER, rows_per_batch=8)
    assert result.sequence == 300

    # 1. The server restarts between two calls of a long-lived worker: its next call
    # continues at 301 from the Client's memory (and rides out the dead connection).
    durable_server.restart()
    result = survivor.stream_scores(name, *second, worker_id=WORKER, rows_per_batch=8)
    survivor.close()
    assert (result.sequence, result.batches, result.duplicate_acks) == (400, 100, 0)
    assert not result.duplicate
    assert result.sample_count == (300 + 100) * 8

    # 2. The server restarts again and the worker process too: a new Client knows
    # nothing and must ask the server, whose sequence for the worker is the recovered 400.
    durable_server.restart()
    with connect(durable_server) as control:
        recovered = control.get_session(name)
    assert recovered.worker_sequences == {WORKER: 400}
    assert recovered.sample_count == 400 * 8

    with connect(durable_server) as fresh:
        # Its first batch alone: applied (not a duplicate) as sequence 401.
        one = fresh.stream_scores(name, third[0][:8], third[1][:8], worker_id=WORKER,
                                  rows_per_batch=8)
        assert (one.sequence, one.batches, one.duplicate, one.duplicate_acks) == (
            401, 1, False, 0)
        assert one.sample_count == 400 * 8 + 8
        rest = fresh.stream_scores(name, third[0][8:], third[1][8:], worker_id=WORKER,
                                   rows_per_batch=8)
        assert (rest.sequence, rest.batches, rest.duplicate_acks) == (550, 149, 0)
        check_statistics(fresh, name, [first, second, third], 550)

    # And the whole of it survives one more SIGKILL.
    durable_server.restart()
    with connect(durable_server) as control:
        check_statistics(control, name, [first, second, third], 550)
