"""Shared pieces of the durability tests: the real fisherd on a data directory, a
deterministic workload, its float64 reference, and the log's record frame.

Everything here talks to the real binary (FISHERD_BIN, default build/server/fisherd)
over loopback, through the generated fisherd.v1 stubs of the Python client package
(client/python, imported from the source tree: the first import generates the stubs).

The workload. Batch (session, worker, sequence) is a pure function of those three and
the seed: 1-4 rows of float32 normal scores and per-row weights in {0.25, 0.5, ..., 2}.
Why those weights: a weight has at most 3 significant bits and a float32 score 24, so
w * s_i * s_j (3 + 24 + 24 = 51 bits) and w * s_i^2 are exact in float64, and every
weight sum is a sum of multiples of 1/4 far below 2^51, exact in float64 whatever the
order. So W (weight_sum) and the sample count must match the reference exactly, and
F = M / W differs from the reference only by the rounding of M's sums (see
compare_state for the bound).
"""
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import grpc
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import fisherd  # noqa: E402,F401  (generates the stubs on first import)
from fisherd.v1 import fisher_pb2 as pb  # noqa: E402
from fisherd.v1 import fisher_pb2_grpc as pb_grpc  # noqa: E402

SEED = int(os.environ.get("FISHERD_DURABILITY_SEED", "20250611"))

# Relative tolerance on F (see compare_state).
F_RTOL = 1e-12


def fisherd_binary():
    return os.environ.get("FISHERD_BIN", str(REPO / "build" / "server" / "fisherd"))


# --- the process ----------------------------------------------------------------------

class StartFailed(Exception):
    def __init__(self, returncode, stderr, command):
        super().__init__(f"fisherd exited with status {returncode} before listening "
                         f"({' '.join(command)}); stderr:\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


_start_counter = iter(range(1, 1 << 30))


class Fisherd:
    """One fisherd process on `data_dir` (None: memory only). stdout and stderr go to
    files under `log_dir` (kept for a failing test's post-mortem); start() returns once
    the process printed 'fisherd listening on HOST:PORT' (recovery is done by then)."""

    def __init__(self, data_dir, log_dir, flags=(), fault=None, wrapper=(), env=None):
        self.data_dir = None if data_dir is None else pathlib.Path(data_dir)
        self.log_dir = pathlib.Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.flags = list(flags)
        self.fault = fault
        self.wrapper = list(wrapper)
        self.extra_env = dict(env or {})
        self.process = None
        self.address = None
        self.start_seconds = None
        self.channels = []

    @property
    def command(self):
        data_dir = [] if self.data_dir is None else [f"--data-dir={self.data_dir}"]
        return [*self.wrapper, fisherd_binary(), "--listen=127.0.0.1:0", *data_dir,
                *self.flags]

    def _environment(self):
        env = dict(os.environ)
        env.pop("FISHERD_FAULT", None)
        if self.fault:
            env["FISHERD_FAULT"] = self.fault
        env.update(self.extra_env)
        return env

    def launch(self):
        """Starts the process without waiting for it."""
        n = next(_start_counter)
        self.stdout_path = self.log_dir / f"fisherd-{n}.stdout"
        self.stderr_path = self.log_dir / f"fisherd-{n}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL,
                                            env=self._environment())
        self.launched_at = time.monotonic()
        return self

    def start(self, timeout=30.0):
        """Starts and waits for the listening line; StartFailed if the process exits first."""
        self.launch()
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(r"fisherd listening on (\S+)", self.stdout())
            if match:
                self.address = match.group(1)
                self.start_seconds = time.monotonic() - self.launched_at
                return self
            if self.process.poll() is not None:
                raise StartFailed(self.process.returncode, self.stderr(), self.command)
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"fisherd printed no address within {timeout} s; "
                                     f"stderr:\n{self.stderr()}")
            time.sleep(0.005)

    def run_to_exit(self, timeout=30.0):
        """For a start that must fail: launches, waits for the exit and returns
        (returncode, stderr). Fails the test if the process starts listening."""
        self.launch()
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if re.search(r"fisherd listening on (\S+)", self.stdout()):
                self.process.kill()
                self.process.wait()
                raise AssertionError("fisherd started listening but its start was expected "
                                     f"to fail; stderr:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"fisherd neither listened nor exited within {timeout} "
                                     f"s; stderr:\n{self.stderr()}")
            time.sleep(0.005)
        return self.process.returncode, self.stderr()

    def stub(self):
        """A FisherService stub on a new channel to this process; the channel is closed
        before a SIGTERM (fisherd's drain waits ~5 s for idle client connections)."""
        ch = channel(self.address)
        self.channels.append(ch)
        return pb_grpc.FisherServiceStub(ch)

    def close_channels(self):
        for ch in self.channels:
            ch.close()
        self.channels = []

    def stdout(self):
        return self.stdout_path.read_text(errors="replace")

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def stderr_matching(self, pattern, timeout=20.0):
        """stderr once it matches `pattern` (a regex, case-insensitive), or as it is after
        `timeout` s: fisherd writes its recovery report after the listening line that
        start() waits for, so the report may still be on its way."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            if re.search(pattern, text, re.I) or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL (no drain); returns the exit status (-9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        status = self.process.wait(timeout=30)
        self.close_channels()
        return status

    def terminate(self, timeout=60):
        """SIGTERM: drain (final snapshots); returns the exit status."""
        self.close_channels()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"fisherd did not exit within {timeout} s of SIGTERM")

    def wait_exit(self, timeout):
        """The exit status once the process ended, or None after `timeout` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def startup_line(self):
        """The stderr lines that mention the data directory or recovery."""
        return " | ".join(line.strip() for line in self.stderr().splitlines()
                          if re.search(r"data.dir|recover|replay|torn|snapshot",
                                       line, re.I))

    def cleanup(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close_channels()


@contextlib.contextmanager
def running(server):
    try:
        yield server
    finally:
        server.cleanup()


def channel(address):
    return grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        # A restarted server listens on a new port; no channel outlives its server.
        ("grpc.enable_retries", 0),
    ])


# --- the workload ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    session_id: str
    representation: str  # "dense" or "diagonal"
    dim: int
    index: int           # part of the batch seed


DENSE = Spec("dense", "dense", 64, 0)
DIAGONAL = Spec("diag", "diagonal", 512, 1)
SPECS = (DENSE, DIAGONAL)


def worker_name(worker):
    return f"w{worker}"


def batch_content(spec, worker, sequence, seed=SEED):
    """(scores float32 rows x dim, weights float32 rows) of batch (spec, worker, sequence)."""
    rng = np.random.default_rng([seed, spec.index, worker, sequence])
    rows = int(rng.integers(1, 5))
    scores = rng.standard_normal((rows, spec.dim), dtype=np.float32)
    weights = (rng.integers(1, 9, size=rows) * 0.25).astype(np.float32)
    return scores, weights


def batch_message(spec, worker, sequence, seed=SEED):
    scores, weights = batch_content(spec, worker, sequence, seed)
    return pb.ScoreBatch(session=f"sessions/{spec.session_id}", worker_id=worker_name(worker),
                         sequence=sequence, rows=scores.shape[0],
                         scores_f32=scores.astype("<f4").tobytes(),
                         weights=weights.tolist())


def create_sessions(stub, specs=SPECS, timeout=20):
    """Creates the sessions. decay=1.0: a step then multiplies nothing, so steps leave the
    sums alone and the reference is the plain float64 sum of the batches."""
    for spec in specs:
        representation = (pb.REPRESENTATION_DENSE if spec.representation == "dense"
                          else pb.REPRESENTATION_DIAGONAL)
        stub.CreateSession(pb.CreateSessionRequest(
            session_id=spec.session_id,
            config=pb.SessionConfig(dim=spec.dim, representation=representation,
                                    decay=1.0, damping=1e-2)), timeout=timeout)


def step_request(spec, rng):
    return pb.NaturalGradientStepRequest(session=f"sessions/{spec.session_id}",
                                         gradient=rng.standard_normal(spec.dim).tolist(),
                                         damping=1e-2, learning_rate=0.1)


class Reference:
    """The float64 reference of one session: per worker, the sums over its batches
    1..s, extended incrementally as the recovered sequences grow."""

    def __init__(self, spec, seed=SEED):
        self.spec = spec
        self.seed = seed
        self.partial = {}  # worker -> (upto, M or diag(M), count, W)

    def _zero(self):
        d = self.spec.dim
        return np.zeros((d, d) if self.spec.representation == "dense" else d)

    def _add(self, acc, worker, sequence):
        scores, weights = batch_content(self.spec, worker, sequence, self.seed)
        x = scores.astype(np.float64)
        w = weights.astype(np.float64)
        if self.spec.representation == "dense":
            acc += x.T @ (w[:, None] * x)
        else:
            acc += (w[:, None] * x * x).sum(axis=0)
        return scores.shape[0], float(w.sum())

    def worker_sums(self, worker, upto):
        done, acc, count, wsum = self.partial.get(worker, (0, self._zero(), 0, 0.0))
        if upto < done:  # only when a server lost data; recompute without caching
            done, acc, count, wsum = 0, self._zero(), 0, 0.0
            for s in range(1, upto + 1):
                c, w = self._add(acc, worker, s)
                count += c
                wsum += w
            return acc, count, wsum
        acc = acc.copy()
        for s in range(done + 1, upto + 1):
            c, w = self._add(acc, worker, s)
            count += c
            wsum += w
        self.partial[worker] = (upto, acc, count, wsum)
        return acc, count, wsum

    def expected(self, sequences):
        """sequences: worker -> highest sequence (batches 1..it of that worker)."""
        total, count, wsum = self._zero(), 0, 0.0
        for worker in sorted(sequences):
            acc, c, w = self.worker_sums(worker, sequences[worker])
            total += acc
            count += c
            wsum += w
        return Expected(sums=total, sample_count=count, weight_sum=wsum)


@dataclasses.dataclass
class Expected:
    sums: np.ndarray
    sample_count: int
    weight_sum: float

    @property
    def fisher(self):
        return self.sums / self.weight_sum


@dataclasses.dataclass
class State:
    """What the server reports about one session."""
    spec: Spec
    sample_count: int
    weight_sum: float
    step_count: int
    worker_sequences: dict   # worker index -> sequence
    raw_worker_sequences: dict
    fisher: object           # np.ndarray (dense matrix / diagonal) or None without samples
    summary_count: int = None
    summary_weight: float = None


def read_state(stub, spec, timeout=30):
    session = stub.GetSession(pb.GetSessionRequest(name=f"sessions/{spec.session_id}"),
                              timeout=timeout)
    raw = dict(session.stats.worker_sequences)
    workers = {}
    for name, sequence in raw.items():
        match = re.fullmatch(r"w(\d+)", name)
        assert match, f"session {spec.session_id}: unknown worker_id {name!r} recovered"
        workers[int(match.group(1))] = sequence
    state = State(spec=spec, sample_count=session.stats.sample_count,
                  weight_sum=session.stats.weight_sum, step_count=session.stats.step_count,
                  worker_sequences=workers, raw_worker_sequences=raw, fisher=None)
    if state.sample_count:
        messages = list(stub.GetFisher(pb.GetFisherRequest(
            session=f"sessions/{spec.session_id}", include_matrix=True), timeout=timeout))
        summary = messages[0].summary
        state.summary_count = summary.sample_count
        state.summary_weight = summary.weight_sum
        values = np.concatenate([np.array(m.values, dtype=np.float64)
                                 for m in messages if m.values] or [np.empty(0)])
        if spec.representation == "dense":
            assert values.size == spec.dim * spec.dim, (
                f"{spec.session_id}: GetFisher streamed {values.size} values for dim "
                f"{spec.dim}")
            state.fisher = values.reshape(spec.dim, spec.dim)
        else:
            assert values.size == spec.dim, (
                f"{spec.session_id}: GetFisher streamed {values.size} values for dim "
                f"{spec.dim}")
            state.fisher = values
    return state


def compare_state(state, expected, context=""):
    """Differences between the server's state and the reference, as messages ([] when
    equal).

    Counts and W must be equal exactly (see the module docstring). F: every product
    w s_i s_j is exact in float64, so the server and the reference sum the same exact
    terms and differ only by the order of the additions (the server adds in log order,
    which replay repeats bit for bit; the reference adds worker by worker, and BLAS
    orders each batch's products its own way), plus one rounding of M / W. A float64
    sum of n terms in any order is within (n-1) u sum|terms| of the exact sum
    (u = 2^-53) in the worst case, and ~sqrt(n) u sum|terms| for rounding errors of
    random sign. Here n is at most a few 1e4 rows per session: typically ~2e-14 of the
    entries (observed: <= 1e-14), the worst case a few 1e-12. F_RTOL = 1e-12 lies far
    above the typical error and far below what a missing or extra batch does (one row
    of ~1e4 moves F by ~1e-4 relative). Dense: compared entry-wise against
    F_RTOL * max|F_ref| (off-diagonal entries sum terms of both signs, so their own
    relative error is unbounded near 0); diagonal: every term is >= 0, so entry-wise
    relative error is bounded as above, compared against F_RTOL * |F_ref_i|."""
    label = f"{context}session {state.spec.session_id}"
    problems = []
    if state.sample_count != expected.sample_count:
        problems.append(f"{label}: sample_count {state.sample_count} != reference "
                        f"{expected.sample_count}")
    if state.weight_sum != expected.weight_sum:
        problems.append(f"{label}: weight_sum {state.weight_sum!r} != reference "
                        f"{expected.weight_sum!r} (exact in float64)")
    if expected.sample_count == 0:
        if state.fisher is not None:
            problems.append(f"{label}: has F though the reference has no sample")
        return problems
    if state.fisher is None:
        problems.append(f"{label}: no F (sample_count {state.sample_count}) but the "
                        f"reference has {expected.sample_count} samples")
        return problems
    if state.summary_count != state.sample_count or state.summary_weight != state.weight_sum:
        problems.append(f"{label}: GetFisher summary (count {state.summary_count}, W "
                        f"{state.summary_weight!r}) disagrees with GetSession (count "
                        f"{state.sample_count}, W {state.weight_sum!r})")
    reference = expected.fisher
    error = np.abs(state.fisher - reference)
    if not np.all(np.isfinite(state.fisher)):
        problems.append(f"{label}: F has non-finite entries")
        return problems
    if state.spec.representation == "dense":
        scale = float(np.max(np.abs(reference)))
        worst = np.unravel_index(int(np.argmax(error)), error.shape)
        if error[worst] > F_RTOL * scale:
            problems.append(
                f"{label}: F differs from the float64 reference: max |dF| = "
                f"{error[worst]:.3e} at {tuple(int(i) for i in worst)} (server "
                f"{state.fisher[worst]!r}, reference {reference[worst]!r}), "
                f"{error[worst] / scale:.3e} of max|F| = {scale:.3e} > {F_RTOL}")
    else:
        relative = error / np.abs(reference)
        worst = int(np.argmax(relative))
        if relative[worst] > F_RTOL:
            problems.append(
                f"{label}: diag(F) differs from the float64 reference: relative error "
                f"{relative[worst]:.3e} at {worst} (server {state.fisher[worst]!r}, "
                f"reference {reference[worst]!r}) > {F_RTOL}")
    return problems


def max_relative_error(state, expected):
    if state.fisher is None or expected.sample_count == 0:
        return 0.0
    reference = expected.fisher
    if state.spec.representation == "dense":
        return float(np.max(np.abs(state.fisher - reference)) / np.max(np.abs(reference)))
    return float(np.max(np.abs(state.fisher - reference) / np.abs(reference)))


# --- streaming workers -----------------------------------------------------------------

class AckLog:
    """Per (worker, spec): highest sequence sent, highest acknowledged, and problems seen
    in the acks. Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}
        self.acked = {}
        self.problems = []

    def note_sent(self, worker, spec, sequence):
        with self.lock:
            key = (worker, spec.session_id)
            self.sent[key] = max(self.sent.get(key, 0), sequence)

    def note_ack(self, worker, spec, sequence):
        with self.lock:
            key = (worker, spec.session_id)
            self.acked[key] = max(self.acked.get(key, 0), sequence)

    def problem(self, message):
        with self.lock:
            self.problems.append(message)


def stream_burst(stub, spec, worker, first, count, log, timeout=20, seed=SEED):
    """Sends batches first..first+count-1 of (spec, worker) on one StreamScores call and
    records every ack (each must be a fresh apply of exactly that batch). Returns the
    number of acks received; a broken call raises grpc.RpcError after recording them."""
    def requests():
        for sequence in range(first, first + count):
            message = batch_message(spec, worker, sequence, seed)
            log.note_sent(worker, spec, sequence)
            yield message

    expected = first
    received = 0
    for ack in stub.StreamScores(requests(), timeout=timeout):
        if ack.worker_id != worker_name(worker) or ack.sequence != expected or ack.duplicate:
            log.problem(f"worker {worker} session {spec.session_id}: batch {expected} was "
                        f"acked as (worker {ack.worker_id!r}, sequence {ack.sequence}, "
                        f"duplicate={ack.duplicate}); expected a fresh apply of it")
        log.note_ack(worker, spec, expected)
        expected += 1
        received += 1
    return received


class LoadRun:
    """Worker threads streaming into sessions and an optional stepper, until stop().

    Each worker w resumes at next_sequence[(w, session_id)] and sends bursts of a few
    batches per StreamScores call, alternating over the sessions. An RPC error before
    the server was declared dead (`killed` event) is a problem; after it, expected."""

    def __init__(self, address, workers, specs, next_sequence, log, stepper=False,
                 burst=6, seed=SEED, step_seed=0, allowed_codes=(), dead_check=None):
        self.address = address
        self.workers = workers
        self.specs = specs
        self.next_sequence = dict(next_sequence)
        self.log = log
        self.burst = burst
        self.seed = seed
        self.stop_event = threading.Event()
        self.killed = threading.Event()
        self.allowed_codes = set(allowed_codes)
        # Fault injection: the server kills itself, so an error may come before the test
        # noticed; dead_check() says whether the process has ended (waiting briefly).
        self.dead_check = dead_check
        self.codes = {}
        self.steps_ok = {spec.session_id: 0 for spec in specs}
        self.steps_tried = {spec.session_id: 0 for spec in specs}
        self.threads = [threading.Thread(target=self._worker, args=(w,), daemon=True)
                        for w in workers]
        if stepper:
            self.threads.append(threading.Thread(target=self._stepper, args=(step_seed,),
                                                 daemon=True))
        self.channel = channel(address)
        self.stub = pb_grpc.FisherServiceStub(self.channel)

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def _error(self, where, error):
        code = error.code()
        with self.log.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
        if not self.killed.is_set() and self.dead_check is not None and self.dead_check():
            self.killed.set()
        if not self.killed.is_set() and code not in self.allowed_codes:
            self.log.problem(f"{where}: {code.name} while the server was up: "
                             f"{error.details()}")
        return code

    def _worker(self, worker):
        stub = self.stub
        while not self.stop_event.is_set():
            for spec in self.specs:
                key = (worker, spec.session_id)
                first = self.next_sequence[key]
                try:
                    received = stream_burst(stub, spec, worker, first, self.burst, self.log,
                                            seed=self.seed)
                except grpc.RpcError as error:
                    self._error(f"worker {worker} session {spec.session_id}", error)
                    return
                self.next_sequence[key] = first + received
                if received != self.burst and not self.killed.is_set():
                    self.log.problem(f"worker {worker} session {spec.session_id}: a stream "
                                     f"of {self.burst} batches from {first} ended OK after "
                                     f"{received} acks")
                    return

    def _stepper(self, step_seed):
        rng = np.random.default_rng([self.seed, 99, step_seed])
        while not self.stop_event.is_set():
            for spec in self.specs:
                self.steps_tried[spec.session_id] += 1
                try:
                    self.stub.NaturalGradientStep(step_request(spec, rng), timeout=20)
                    self.steps_ok[spec.session_id] += 1
                except grpc.RpcError as error:
                    code = error.code()
                    if code == grpc.StatusCode.FAILED_PRECONDITION and \
                            not self.killed.is_set():
                        continue  # no sample yet
                    self._error(f"stepper session {spec.session_id}", error)
                    if self.killed.is_set() or code == grpc.StatusCode.UNAVAILABLE:
                        return
            time.sleep(0.005)

    def stop(self, timeout=60):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError("a load thread did not finish within "
                                     f"{timeout} s of stop")
        self.channel.close()


def check_recovered(states, log, references, context="", sent_bound=True):
    """The checks after a restart: (a) every acknowledged sequence is at or below the
    recovered sequence of its worker and session (and nothing never sent was recovered);
    (b) each session's statistics equal the reference of exactly batches 1..recovered
    sequence of each worker. Returns (problems, max relative error of F)."""
    problems = []
    worst = 0.0
    for spec, state in states.items():
        for (worker, session_id), acked in sorted(log.acked.items()):
            if session_id != spec.session_id:
                continue
            recovered = state.worker_sequences.get(worker, 0)
            if acked > recovered:
                problems.append(f"{context}worker {worker} session {session_id}: sequence "
                                f"{acked} was acknowledged but the recovered sequence is "
                                f"{recovered} (acked batches {recovered + 1}..{acked} lost)")
        if sent_bound:
            for worker, recovered in sorted(state.worker_sequences.items()):
                sent = log.sent.get((worker, spec.session_id), 0)
                if recovered > sent:
                    problems.append(f"{context}worker {worker} session {spec.session_id}: "
                                    f"recovered sequence {recovered} but only 1..{sent} "
                                    f"were ever sent")
        expected = references[spec.session_id].expected(state.worker_sequences)
        problems += compare_state(state, expected, context)
        worst = max(worst, max_relative_error(state, expected))
    return problems, worst


# --- the on-disk frame -------------------------------------------------------------------

HEADER = struct.Struct("<QIBQ")  # checksum, length, type, sequence (LSN)
assert HEADER.size == 21

RECORD_TYPES = {1: "SESSION_CREATED", 2: "SESSION_DELETED", 3: "BATCH_APPLIED",
                4: "STEP_APPLIED"}


@dataclasses.dataclass
class Frame:
    path: pathlib.Path
    offset: int
    length: int
    type: int
    lsn: int

    @property
    def end(self):
        return self.offset + HEADER.size + self.length

    @property
    def payload_offset(self):
        return self.offset + HEADER.size


def read_frames(path):
    """The records of a log segment or snapshot file up to the first all-zero header or
    the end of the file (no checksum check: the server's XXH3 is not in Python's stdlib;
    the files read here were just written by a cleanly running server)."""
    data = pathlib.Path(path).read_bytes()
    frames = []
    offset = 0
    while offset + HEADER.size <= len(data):
        checksum, length, kind, lsn = HEADER.unpack_from(data, offset)
        if checksum == 0 and length == 0 and kind == 0 and lsn == 0:
            break
        if offset + HEADER.size + length > len(data) or kind == 0:
            raise AssertionError(f"{path}: unparseable frame at offset {offset} (length "
                                 f"{length}, type {kind}); the test's idea of the record "
                                 f"format (record_format.h) is out of date")
        frames.append(Frame(pathlib.Path(path), offset, length, kind, lsn))
        offset += HEADER.size + length
    return frames


def segments(data_dir):
    return sorted((pathlib.Path(data_dir) / "log").glob("*.wal"))


def snapshots(data_dir):
    return sorted((pathlib.Path(data_dir) / "snapshots").glob("*.snap"))


def log_frames(data_dir):
    """segment path -> frames, checking that LSNs run consecutively and that each
    segment's name is its first record's LSN."""
    result = {}
    previous = None
    for path in segments(data_dir):
        frames = read_frames(path)
        result[path] = frames
        if frames:
            assert re.fullmatch(r"\d{20}\.wal", path.name), f"segment name {path.name}"
            assert int(path.stem) == frames[0].lsn, (
                f"{path.name}: first record has LSN {frames[0].lsn}")
        for frame in frames:
            if previous is not None:
                assert frame.lsn == previous + 1, (
                    f"{path.name} offset {frame.offset}: LSN {frame.lsn} follows {previous}")
            previous = frame.lsn
    return result


def _read_varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def batch_of_frame(frame):
    """The ScoreBatch of a BATCH_APPLIED record (fisherd.durable.v1.BatchApplied: field 1
    is the batch), decoded by hand so that the test needs no stubs of records.proto."""
    assert frame.type == 3
    with open(frame.path, "rb") as f:
        f.seek(frame.payload_offset)
        payload = f.read(frame.length)
    pos = 0
    while pos < len(payload):
        key, pos = _read_varint(payload, pos)
        wire = key & 7
        if wire == 2:
            size, pos = _read_varint(payload, pos)
            if key >> 3 == 1:
                return pb.ScoreBatch.FromString(payload[pos:pos + size])
            pos += size
        elif wire == 0:
            _, pos = _read_varint(payload, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            break
    raise AssertionError(f"{frame.path.name} offset {frame.offset}: BATCH_APPLIED payload "
                         "without a batch (field 1)")


def tree_digest(root):
    """relative path -> (mode, size, sha256) of every file and directory under root."""
    root = pathlib.Path(root)
    digest = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        if path.is_file():
            digest[str(path.relative_to(root))] = (
                stat.st_mode, stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            digest[str(path.relative_to(root))] = (stat.st_mode, None, None)
    return digest


def diff_digests(before, after):
    lines = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"{name}: removed")
        elif name not in before:
            lines.append(f"{name}: created")
        elif before[name] != after[name]:
            lines.append(f"{name}: changed {before[name][:2]} -> {after[name][:2]}")
    return lines
