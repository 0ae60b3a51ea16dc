"""fisherd.Client: a blocking Python client for fisherd.v1.FisherService.

One Client holds one gRPC channel (one HTTP/2 connection) and may be shared by threads.
Every call raises fisherd.FisherdError (gRPC status code + the server's message) on
failure. stream_scores() is the reliable bulk path: raw little-endian float32 batches,
per-worker sequence numbers, several batches in flight on one bidirectional stream, and
after a broken stream a reconnect that resends every unacknowledged batch (the server
counts a batch once per (worker_id, sequence), so resending is always safe).
"""
import collections
import dataclasses
import os
import queue
import socket
import threading
import time
import uuid

import grpc
import numpy as np

from fisherd.errors import TRANSIENT_CODES, FisherdError, invalid_argument
from fisherd.v1 import fisher_pb2 as pb
from fisherd.v1 import fisher_pb2_grpc

__all__ = ["Client", "Session", "StepResult", "StreamResult", "Fisher", "session_name"]

_STREAM_SCORES = "/fisherd.v1.FisherService/StreamScores"
_REPRESENTATIONS = {"dense": pb.REPRESENTATION_DENSE, "diagonal": pb.REPRESENTATION_DIAGONAL}
_REPRESENTATION_NAMES = {pb.REPRESENTATION_UNSPECIFIED: "dense",
                         pb.REPRESENTATION_DENSE: "dense",
                         pb.REPRESENTATION_DIAGONAL: "diagonal"}
_END = object()  # ends a request generator (half-closes the stream)


def session_name(session):
    """"sessions/{id}" for a bare id; a resource name is returned as is."""
    if not isinstance(session, str) or not session:
        raise invalid_argument(f"session must be a non-empty string, got {session!r}")
    return session if session.startswith("sessions/") else f"sessions/{session}"


@dataclasses.dataclass(frozen=True)
class Session:
    """A session's configuration and statistics (fisherd.v1.Session)."""
    name: str
    dim: int
    representation: str            # "dense" or "diagonal"
    centered: bool
    decay: float
    damping: float
    sample_count: int              # rows applied, never decayed
    weight_sum: float              # W, after decay
    step_count: int
    worker_sequences: dict         # worker_id -> highest applied sequence

    @classmethod
    def from_proto(cls, s):
        return cls(name=s.name, dim=s.config.dim,
                   representation=_REPRESENTATION_NAMES.get(s.config.representation,
                                                            str(s.config.representation)),
                   centered=s.config.centered, decay=s.config.decay, damping=s.config.damping,
                   sample_count=s.stats.sample_count, weight_sum=s.stats.weight_sum,
                   step_count=s.stats.step_count,
                   worker_sequences=dict(s.stats.worker_sequences))


@dataclasses.dataclass(frozen=True)
class StepResult:
    """A natural-gradient step: update = -eta * natural_gradient (float64 arrays)."""
    natural_gradient: np.ndarray   # n = (F + lambda I)^-1 g
    update: np.ndarray             # -eta n: add it to the parameters
    eta: float
    natural_norm_sq: float         # g^T n
    predicted_kl: float            # 1/2 update^T F update (undamped F)
    solver: object                 # fisherd.v1.SolverSummary


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """The last acknowledgement of a stream_scores call and what the call did."""
    worker_id: str
    sequence: int                  # highest sequence the server applied for the worker
    duplicate: bool
    sample_count: int              # the session's total after the last batch
    rows: int                      # rows this call delivered
    batches: int                   # distinct batches of this call
    batches_resent: int            # retransmissions after broken streams
    duplicate_acks: int            # resent batches the server had already applied
    streams_opened: int


@dataclasses.dataclass(frozen=True)
class Fisher:
    """The estimate from GetFisher: `matrix` is dim x dim (dense), the diagonal
    (diagonal sessions), or None when not requested; `summary` a fisherd.v1.FisherSummary."""
    summary: object
    matrix: object


def _varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_F32_MAX = float(np.finfo(np.float32).max)


def _as_score_rows(scores):
    """Any array-like of real numbers -> a validated 2-D array (a 1-D input is one row).

    The rows keep their dtype and layout: each batch is converted to little-endian
    float32 when it is encoded, so a float64 input is never copied whole (and a float32
    C-contiguous one not at all). Validation runs first over everything, so a bad row
    is reported before any batch is sent."""
    try:
        array = np.asarray(scores)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"scores are not a numeric array: {error}") from None
    if array.dtype.kind not in "fiub":
        raise invalid_argument(f"scores must be real numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise invalid_argument(f"scores must be 2-D (rows x dim) or one 1-D row, got shape "
                               f"{array.shape}")
    if array.dtype.kind == "f" and array.size:
        # Two vectorized passes without temporaries; NaN fails both comparisons.
        with np.errstate(invalid="ignore"):
            low, high = array.min(), array.max()
        if not (low >= -_F32_MAX and high <= _F32_MAX):
            _raise_for_first_bad_row(array)
    return array


def _raise_for_first_bad_row(array):
    """Finds the first row that is not finite once rounded to float32 (values just
    beyond float32's largest finite value may still round to it)."""
    for start in range(0, array.shape[0], 1024):
        with np.errstate(over="ignore", invalid="ignore"):
            block = array[start:start + 1024].astype(np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise invalid_argument(
                f"scores row {start + int(np.argmin(finite))} is not finite in float32 "
                "(NaN, infinite, or beyond float32 range)")


def _as_weights(weights, rows):
    if weights is None:
        return None
    try:
        array = np.asarray(weights)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"weights are not a numeric array: {error}") from None
    if array.dtype.kind not in "fiub":
        raise invalid_argument(f"weights must be real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    if array.shape[0] != rows:
        raise invalid_argument(f"weights has {array.shape[0]} entries for {rows} rows")
    bad = ~(np.isfinite(array) & (array >= 0))
    if bad.any():
        raise invalid_argument(f"weights[{int(np.argmax(bad))}] = {array[np.argmax(bad)]} "
                               "is not a finite number >= 0")
    return None if (array == 1.0).all() else array


class _Stream:
    """One StreamScores call fed from a queue by gRPC's sending thread."""

    def __init__(self, call_factory, timeout, metadata):
        self._queue = queue.Queue()
        self.responses = call_factory(self._requests(), timeout=timeout, metadata=metadata)
        self.half_closed = False

    def _requests(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    def send(self, data):
        self._queue.put(data)

    def half_close(self):
        if not self.half_closed:
            self.half_closed = True
            self._queue.put(_END)

    def abandon(self):
        self.half_close()  # releases the sending thread if it still waits
        self.responses.cancel()


class Client:
    """A connection to fisherd.

    target: "host:port" or any gRPC target. token: sent as ``authorization: Bearer
    <token>`` metadata on every call. root_certificates (PEM bytes) selects TLS; with
    private_key and certificate_chain (PEM bytes) it is mutual TLS. server_name_override
    checks the server's certificate against another name than the target's host.
    timeout: seconds per unary call. wait_for_ready: calls wait for the server (up to
    their timeout) instead of failing at once with UNAVAILABLE. stream_timeout: the
    deadline of one StreamScores call (a longer stream_scores call reopens streams).
    """

    def __init__(self, target, *, token=None, root_certificates=None, private_key=None,
                 certificate_chain=None, server_name_override=None, timeout=30.0,
                 wait_for_ready=False, max_message_bytes=64 << 20, stream_timeout=300.0,
                 max_retries=10, initial_backoff=0.05, max_backoff=2.0, options=()):
        if not target:
            raise invalid_argument("target is empty")
        self.target = target
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC's own reconnect backoff grows to minutes; a client that lost its
            # server should notice it is back within seconds.
            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000)),
        ]
        if server_name_override:
            channel_options.append(("grpc.ssl_target_name_override", server_name_override))
        channel_options.extend(options)
        if root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates), private_key=_pem(private_key),
                certificate_chain=_pem(certificate_chain))
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._stub = fisher_pb2_grpc.FisherServiceStub(self._channel)
        # Requests go out pre-serialized: the header fields through protobuf, the score
        # bytes appended as field 5 without an extra copy through a bytes object.
        self._stream_call = self._channel.stream_stream(
            _STREAM_SCORES, request_serializer=None,
            response_deserializer=pb.ScoreAck.FromString)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        self._max_message_bytes = max_message_bytes
        self._stream_timeout = stream_timeout
        self._max_retries = max_retries
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._workers = {}    # (session name, worker_id) -> [next sequence, dim]
        self._busy = set()    # (session name, worker_id) of stream_scores calls running
        self.default_worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # --- lifetime -------------------------------------------------------------------
    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def channel(self):
        return self._channel

    def wait_until_ready(self, timeout=10.0):
        """Blocks until the channel is connected; FisherdError(UNAVAILABLE) after timeout."""
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            ready.cancel()
            raise FisherdError(grpc.StatusCode.UNAVAILABLE,
                               f"no connection to the server within {timeout} s") from None

    # --- sessions -------------------------------------------------------------------
    def create_session(self, session_id, dim, representation="dense", centered=False,
                       decay=1.0, damping=0.0):
        """Creates sessions/{session_id}; returns that name."""
        if representation not in _REPRESENTATIONS:
            raise invalid_argument(f"representation must be one of {sorted(_REPRESENTATIONS)}, "
                                   f"got {representation!r}")
        config = pb.SessionConfig(dim=int(dim), representation=_REPRESENTATIONS[representation],
                                  centered=bool(centered), decay=float(decay),
                                  damping=float(damping))
        session = self._unary(self._stub.CreateSession,
                              pb.CreateSessionRequest(session_id=session_id, config=config))
        return session.name

    def get_session(self, name):
        return Session.from_proto(
            self._unary(self._stub.GetSession, pb.GetSessionRequest(name=session_name(name))))

    def list_sessions(self):
        response = self._unary(self._stub.ListSessions, pb.ListSessionsRequest())
        return [Session.from_proto(s) for s in response.sessions]

    def delete_session(self, name):
        name = session_name(name)
        self._unary(self._stub.DeleteSession, pb.DeleteSessionRequest(name=name))
        with self._lock:
            for key in [k for k in self._workers if k[0] == name]:
                del self._workers[key]

    # --- steps and products -----------------------------------------------------------
    def step(self, session, gradient, *, kl_budget=0.0, learning_rate=0.0, damping=None,
             skip_decay=False):
        """Natural-gradient step for `gradient` (of the loss being minimized).

        eta = learning_rate without a budget; with kl_budget c > 0, eta = sqrt(2c / g^T n),
        capped by learning_rate when that is > 0; both 0: eta = 1. damping overrides the
        session's lambda. Unless skip_decay, the server then decays the statistics."""
        request = pb.NaturalGradientStepRequest(
            session=session_name(session), gradient=_as_vector(gradient, "gradient"),
            kl_budget=float(kl_budget), learning_rate=float(learning_rate),
            skip_decay=bool(skip_decay))
        if damping is not None:
            request.damping = float(damping)
        response = self._unary(self._stub.NaturalGradientStep, request)
        return StepResult(natural_gradient=np.array(response.natural_gradient, dtype=np.float64),
                          update=np.array(response.update, dtype=np.float64),
                          eta=response.eta, natural_norm_sq=response.natural_norm_sq,
                          predicted_kl=response.predicted_kl, solver=response.solver)

    def fisher_vector_product(self, session, vector):
        """(F v, 1/2 v^T F v) with the undamped estimate F."""
        response = self._unary(self._stub.FisherVectorProduct, pb.FisherVectorProductRequest(
            session=session_name(session), vector=_as_vector(vector, "vector")))
        return np.array(response.product, dtype=np.float64), response.quadratic_kl

    def get_fisher(self, session, include_matrix=True, include_eigenvalues=False):
        """The estimate F (dense: dim x dim; diagonal: its diagonal) and its summary."""
        request = pb.GetFisherRequest(session=session_name(session),
                                      include_matrix=include_matrix,
                                      include_eigenvalues=include_eigenvalues)
        try:
            messages = list(self._stub.GetFisher(request, timeout=self._timeout,
                                                 metadata=self._metadata,
                                                 wait_for_ready=self._wait_for_ready))
        except grpc.RpcError as error:
            raise FisherdError.from_rpc_error(error) from None
        summary = messages[0].summary
        if not include_matrix:
            return Fisher(summary=summary, matrix=None)
        dim = summary.dim
        values = np.concatenate([np.array(m.values, dtype=np.float64) for m in messages])
        if summary.representation == pb.REPRESENTATION_DIAGONAL:
            return Fisher(summary=summary, matrix=values)
        return Fisher(summary=summary, matrix=values.reshape(dim, dim))

    # --- scores -----------------------------------------------------------------------
    def stream_scores(self, session, scores, weights=None, worker_id=None, rows_per_batch=256,
                      max_in_flight=8):
        """Streams score rows into `session` and returns once the server applied them all.

        scores: rows x dim, any real dtype or anything np.asarray accepts (a 1-D array is
        one row); sent as little-endian float32. weights: None (all 1) or one >= 0 per row.
        worker_id: the sender's identity (default: one per Client); the batches are
        numbered after the worker's last applied sequence (asked from the server the first
        time this Client streams for the worker). Up to max_in_flight batches of
        rows_per_batch rows are unacknowledged at once; a broken stream is reopened (with
        backoff, up to max_retries times without progress) and every unacknowledged batch
        resent. Returns a StreamResult (None for zero rows). On a FisherdError, batches
        acknowledged before it stay applied.
        """
        name = session_name(session)
        worker = worker_id if worker_id is not None else self.default_worker_id
        if not isinstance(worker, str) or not worker:
            raise invalid_argument("worker_id must be a non-empty string")
        rows = _as_score_rows(scores)
        count, dim = rows.shape
        weight_rows = _as_weights(weights, count)
        if count == 0:
            return None
        rows_per_batch = int(rows_per_batch)
        if rows_per_batch < 1 or max_in_flight < 1:
            raise invalid_argument("rows_per_batch and max_in_flight must be >= 1")
        if 4 * rows_per_batch * (dim + 1) + 1024 > self._max_message_bytes:
            raise invalid_argument(f"a batch of {rows_per_batch} rows at dim {dim} exceeds "
                                   f"max_message_bytes {self._max_message_bytes}; lower "
                                   "rows_per_batch")
        key = (name, worker)
        with self._lock:
            if key in self._busy:
                raise FisherdError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"worker {worker} is already streaming into {name} from "
                                   "this client; use one worker_id per concurrent stream")
            self._busy.add(key)
            state = self._workers.get(key)
        try:
            if state is None:
                info = self.get_session(name)
                state = [info.worker_sequences.get(worker, 0) + 1, info.dim]
            if dim != state[1]:
                raise invalid_argument(f"scores have {dim} columns but {name} has dim {state[1]}")
            result = _StreamRun(self, name, worker, rows, weight_rows, rows_per_batch,
                                max_in_flight, state[0]).run()
            with self._lock:
                self._workers[key] = [state[0] + result.batches, state[1]]
            return result
        except BaseException:
            with self._lock:  # ask the server again next time
                self._workers.pop(key, None)
            raise
        finally:
            with self._lock:
                self._busy.discard(key)

    # --- internals ----------------------------------------------------------------------
    def _unary(self, method, request):
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata,
                          wait_for_ready=self._wait_for_ready)
        except grpc.RpcError as error:
            raise FisherdError.from_rpc_error(error) from None


class _StreamRun:
    """The state of one stream_scores call."""

    def __init__(self, client, name, worker, rows, weights, rows_per_batch, max_in_flight,
                 first_sequence):
        self.client = client
        self.name = name
        self.worker = worker
        self.rows = rows
        self.weights = weights
        self.per_batch = rows_per_batch
        self.max_in_flight = max_in_flight
        self.first = first_sequence
        self.total = -(-rows.shape[0] // rows_per_batch)
        self.scratch = None  # float32 conversion buffer for inputs of other dtypes
        self.highest_sent = first_sequence - 1
        self.unacked = collections.deque()   # [sequence, encoded batch, transmissions]
        self.resent = 0
        self.duplicates = 0
        self.streams = 0
        self.last_ack = None

    def encode(self, index):
        start = index * self.per_batch
        end = min(start + self.per_batch, self.rows.shape[0])
        sequence = self.first + index
        head = pb.ScoreBatch(session=self.name, worker_id=self.worker, sequence=sequence,
                             rows=end - start).SerializeToString()
        block = self.rows[start:end]
        if block.dtype != np.dtype("<f4") or not block.flags.c_contiguous:
            # Convert into one reused buffer (join below copies it into the message):
            # a fresh allocation per batch would page-fault on every batch.
            if self.scratch is None:
                self.scratch = np.empty((self.per_batch, self.rows.shape[1]), dtype="<f4")
            with np.errstate(over="ignore"):  # validated: at most rounds to float32's max
                np.copyto(self.scratch[:end - start], block, casting="unsafe")
            block = self.scratch[:end - start]
        parts = [head, b"\x2a", _varint(block.nbytes), block.data]
        if self.weights is not None:
            w = self.weights[start:end]
            parts += [b"\x3a", _varint(w.nbytes), w.data]
        return sequence, b"".join(parts)

    def open(self):
        client = self.client
        stream = _Stream(client._stream_call, client._stream_timeout, client._metadata)
        self.streams += 1
        for entry in self.unacked:
            stream.send(entry[1])
            entry[2] += 1
            self.resent += 1
        return stream

    def process(self, ack):
        if ack.sequence > self.highest_sent:
            raise FisherdError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker {self.worker} on {self.name}: the server has applied sequence "
                f"{ack.sequence} but this client has sent only up to {self.highest_sent}, so "
                "its batches at or below it were discarded as duplicates; another process "
                "uses this worker_id")
        if ack.duplicate:
            # Expected for a resent batch. But a batch at or below the server's highest
            # applied sequence that went out only once, on this stream, behind the
            # resends, cannot have been applied from here: another sender uses this
            # worker_id (or this client's counter is stale) and the batch was dropped.
            for sequence, _, transmissions in self.unacked:
                if sequence > ack.sequence:
                    break
                if transmissions == 1:
                    raise FisherdError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"worker {self.worker} on {self.name}: batch {sequence} is at or "
                        f"below the server's applied sequence {ack.sequence} though it was "
                        "sent only once, just now; another process uses this worker_id, and "
                        "the batch was not applied")
            self.duplicates += 1
        self.last_ack = ack
        progress = False
        while self.unacked and self.unacked[0][0] <= ack.sequence:
            self.unacked.popleft()
            progress = True
        return progress

    def run(self):
        client = self.client
        next_index = 0
        failures = 0
        backoff = client._initial_backoff
        stream = None
        try:
            while next_index < self.total or self.unacked:
                if stream is None:
                    stream = self.open()
                try:
                    if next_index < self.total and len(self.unacked) < self.max_in_flight:
                        sequence, data = self.encode(next_index)
                        next_index += 1
                        self.unacked.append([sequence, data, 1])  # transmissions
                        self.highest_sent = sequence
                        stream.send(data)
                        continue
                    if next_index == self.total:
                        stream.half_close()  # the server acks the rest, then ends the call
                    try:
                        ack = next(stream.responses)
                    except StopIteration:
                        raise _Broken(grpc.StatusCode.UNAVAILABLE,
                                      f"the server closed the score stream with "
                                      f"{len(self.unacked)} batches unacknowledged") from None
                    if self.process(ack):
                        failures = 0
                        backoff = client._initial_backoff
                    continue
                except grpc.RpcError as error:
                    broken = _Broken(error.code(), error.details())
                except _Broken as error:
                    broken = error
                stream.abandon()
                stream = None
                if broken.code not in TRANSIENT_CODES:
                    raise FisherdError(broken.code, broken.message)
                if failures >= client._max_retries:
                    raise FisherdError(broken.code, (
                        f"score stream to {self.name}: gave up after {failures} reconnect "
                        f"attempts, {len(self.unacked) + self.total - next_index} batches "
                        f"undelivered: {broken.message}"))
                failures += 1
                deadline = time.monotonic() + backoff
                ready = grpc.channel_ready_future(client._channel)
                try:  # spend the backoff asking the channel to connect
                    ready.result(timeout=backoff)
                except grpc.FutureTimeoutError:
                    ready.cancel()  # stops watching the channel
                time.sleep(max(0.0, deadline - time.monotonic()))
                backoff = min(2 * backoff, client._max_backoff)
        except BaseException:
            if stream is not None:  # a rejection, a conflict, KeyboardInterrupt: stop now
                stream.abandon()
            raise
        if stream is not None:
            stream.half_close()
            try:
                for _ in stream.responses:  # the server's final status, after the acks
                    pass
            except grpc.RpcError:
                pass  # everything was acknowledged: the batches are applied
        ack = self.last_ack
        return StreamResult(worker_id=self.worker, sequence=ack.sequence,
                            duplicate=ack.duplicate, sample_count=ack.sample_count,
                            rows=self.rows.shape[0], batches=self.total,
                            batches_resent=self.resent, duplicate_acks=self.duplicates,
                            streams_opened=self.streams)


class _Broken(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _as_vector(values, what):
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"{what} is not a numeric vector: {error}") from None
    return array


def _pem(value):
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
