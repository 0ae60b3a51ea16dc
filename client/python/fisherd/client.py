"""fisherd.Client: a blocking Python client for fisherd.v1.FisherService.

One Client holds one gRPC channel (one HTTP/2 connection) and may be shared by threads.
Every call raises fisherd.FisherdError (gRPC status code + the server's message) on
failure. stream_scores() is the reliable bulk path: raw little-endian float32 batches,
per-worker sequence numbers, several batches in flight on one bidirectional stream, and
after a broken stream a reconnect that resends every unacknowledged batch (the server
counts a batch once per (worker_id, sequence), so resending is always safe).
Layered sessions (create_session(blocks=...)) take rows per block (stream_scores' block
and factor, or stream_blocks() for several blocks and factors over one stream); step()
takes gradients of any size, streaming large ones in chunks that stay far below 4 MiB,
gRPC's default message limit (fisherd's own is 64 MiB unless --max-message-mb says
otherwise; this client's is max_message_bytes, 64 MiB by default), so they pass any of
them.

Every call that names one session (all but ListSessions) carries the metadata
`x-fisherd-session: <id>` (the bare id, without "sessions/"), stream opens included, so
that a proxy in front of several fisherd replicas can pick the replica from the header
alone, without parsing protobuf (docs/design.md section 3).
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

__all__ = ["Block", "BlockStats", "Client", "Session", "StepResult", "StreamResult", "Fisher",
           "session_name"]

_STREAM_SCORES = "/fisherd.v1.FisherService/StreamScores"
_STREAM_STEP = "/fisherd.v1.FisherService/StreamNaturalGradientStep"
_REPRESENTATIONS = {"dense": pb.REPRESENTATION_DENSE, "diagonal": pb.REPRESENTATION_DIAGONAL}
_REPRESENTATION_NAMES = {pb.REPRESENTATION_UNSPECIFIED: "dense",
                         pb.REPRESENTATION_DENSE: "dense",
                         pb.REPRESENTATION_DIAGONAL: "diagonal",
                         pb.REPRESENTATION_LAYERED: "layered"}
_BLOCK_KINDS = {"dense": pb.BLOCK_KIND_DENSE, "diagonal": pb.BLOCK_KIND_DIAGONAL,
                "kronecker": pb.BLOCK_KIND_KRONECKER, "low_rank": pb.BLOCK_KIND_LOW_RANK}
_BLOCK_KIND_NAMES = {value: key for key, value in _BLOCK_KINDS.items()}
_FACTORS = {None: pb.FACTOR_UNSPECIFIED, "activations": pb.FACTOR_ACTIVATIONS,
            "output_gradients": pb.FACTOR_OUTPUT_GRADIENTS}
_STEP_ANSWERS = {"full": pb.STEP_ANSWER_FULL, "update": pb.STEP_ANSWER_UPDATE,
                 "update_f32": pb.STEP_ANSWER_UPDATE_F32}
_KRONECKER_DAMPINGS = {None: pb.KRONECKER_DAMPING_UNSPECIFIED,
                       "exact": pb.KRONECKER_DAMPING_EXACT,
                       "factored": pb.KRONECKER_DAMPING_FACTORED}
_KRONECKER_DAMPING_NAMES = {pb.KRONECKER_DAMPING_UNSPECIFIED: "exact",
                            pb.KRONECKER_DAMPING_EXACT: "exact",
                            pb.KRONECKER_DAMPING_FACTORED: "factored"}
# A gradient of up to this many values goes in one NaturalGradientStep call: its answer
# carries two vectors of dim doubles (2 MiB here), well under even gRPC's default 4 MiB
# limit (fisherd --max-message-mb=4; fisherd's own default is 64 MiB).
# Larger gradients take StreamNaturalGradientStep.
_UNARY_STEP_VALUES = 1 << 17
# Bytes of gradient per StreamNaturalGradientStep message: 256k doubles or 512k floats.
_STEP_CHUNK_BYTES = 2 << 20
# stream_scores' default batches: up to 256 rows, fewer when rows are wide so that a batch
# stays at about 2 MiB (at least one row per batch).
_DEFAULT_ROWS_PER_BATCH = 256
_BATCH_BYTES = 2 << 20
_END = object()  # ends a request generator (half-closes the stream)
# The routing header: a load balancer hashes it to keep each session on one replica.
SESSION_HEADER = "x-fisherd-session"


def session_name(session):
    """"sessions/{id}" for a bare id; a resource name is returned as is."""
    if not isinstance(session, str) or not session:
        raise invalid_argument(f"session must be a non-empty string, got {session!r}")
    return session if session.startswith("sessions/") else f"sessions/{session}"


def _routing_id(session):
    """The bare session id the routing header carries, or None when it is not printable
    ASCII: gRPC refuses such a header value outright, and no valid session id has one
    (the server then answers with its own error about the name)."""
    if not isinstance(session, str):
        return None
    bare = session[len("sessions/"):] if session.startswith("sessions/") else session
    if bare and all(" " <= c <= "~" for c in bare):
        return bare
    return None


def _count(value, what):
    """A non-negative integer (any integral type, numpy's included)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid_argument(f"{what} must be an integer, got {value!r}") from None
    if number != value or number < 0 or number >= 1 << 64:
        raise invalid_argument(f"{what} must be an integer in [0, 2^64), got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a layered session (fisherd.v1.BlockConfig).

    kind: "dense", "diagonal" or "low_rank" (dim parameters; low_rank keeps the latest
    max_rows score rows), or "kronecker" (a linear or convolution layer: out_features x
    in_features weights row-major, then out_features biases when bias; F_b = G (x) A from
    its activation and output-gradient rows)."""
    name: str
    kind: str
    dim: int = 0
    in_features: int = 0
    out_features: int = 0
    bias: bool = False
    max_rows: int = 0

    @property
    def parameter_count(self):
        if self.kind == "kronecker":
            return self.out_features * (self.in_features + bool(self.bias))
        return self.dim

    def row_width(self, factor=None):
        """Values per score row: dim, or a Kronecker factor's in_features (activations)
        or out_features (output_gradients)."""
        if self.kind != "kronecker":
            return self.dim
        return self.in_features if factor == "activations" else self.out_features

    def to_proto(self):
        if self.kind not in _BLOCK_KINDS:
            raise invalid_argument(f"block {self.name!r}: kind must be one of "
                                   f"{sorted(_BLOCK_KINDS)}, got {self.kind!r}")
        if not isinstance(self.name, str):
            raise invalid_argument(f"block name must be a string, got {self.name!r}")
        what = f"block {self.name!r}"
        return pb.BlockConfig(name=self.name, kind=_BLOCK_KINDS[self.kind],
                              dim=_count(self.dim, f"{what}: dim"),
                              in_features=_count(self.in_features, f"{what}: in_features"),
                              out_features=_count(self.out_features, f"{what}: out_features"),
                              bias=bool(self.bias),
                              max_rows=_count(self.max_rows, f"{what}: max_rows"))

    @classmethod
    def from_proto(cls, b):
        return cls(name=b.name, kind=_BLOCK_KIND_NAMES.get(b.kind, str(b.kind)), dim=b.dim,
                   in_features=b.in_features, out_features=b.out_features, bias=b.bias,
                   max_rows=b.max_rows)

    @classmethod
    def of(cls, spec):
        """A Block from a Block, a dict of its fields, or a fisherd.v1.BlockConfig."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, pb.BlockConfig):
            return cls.from_proto(spec)
        if isinstance(spec, dict):
            try:
                return cls(**spec)
            except TypeError as error:
                raise invalid_argument(f"block {spec!r}: {error}") from None
        raise invalid_argument(f"a block is a fisherd.Block or a dict, got {spec!r}")


@dataclasses.dataclass(frozen=True)
class BlockStats:
    """One block's statistics (fisherd.v1.BlockStats). For a Kronecker block sample_count
    and weight_sum count its activation rows, output_gradient_* its output-gradient rows."""
    name: str
    sample_count: int
    weight_sum: float
    output_gradient_sample_count: int = 0
    output_gradient_weight_sum: float = 0.0

    @classmethod
    def from_proto(cls, b):
        return cls(name=b.name, sample_count=b.sample_count, weight_sum=b.weight_sum,
                   output_gradient_sample_count=b.output_gradient_sample_count,
                   output_gradient_weight_sum=b.output_gradient_weight_sum)


@dataclasses.dataclass(frozen=True)
class Session:
    """A session's configuration and statistics (fisherd.v1.Session)."""
    name: str
    dim: int
    representation: str            # "dense", "diagonal" or "layered"
    centered: bool
    decay: float
    damping: float
    sample_count: int              # rows applied, never decayed (all blocks and factors)
    weight_sum: float              # W, after decay
    step_count: int
    worker_sequences: dict         # worker_id -> highest applied sequence
    # Layered sessions: the layout, and each block's statistics by name (layout order).
    blocks: tuple = ()
    block_stats: dict = dataclasses.field(default_factory=dict)
    kronecker_damping: str = "exact"   # or "factored"
    factor_refresh_period: int = 1
    float32_products: bool = False

    @classmethod
    def from_proto(cls, s):
        return cls(name=s.name, dim=s.config.dim,
                   representation=_REPRESENTATION_NAMES.get(s.config.representation,
                                                            str(s.config.representation)),
                   centered=s.config.centered, decay=s.config.decay, damping=s.config.damping,
                   sample_count=s.stats.sample_count, weight_sum=s.stats.weight_sum,
                   step_count=s.stats.step_count,
                   worker_sequences=dict(s.stats.worker_sequences),
                   blocks=tuple(Block.from_proto(b) for b in s.config.blocks),
                   block_stats={b.name: BlockStats.from_proto(b) for b in s.stats.blocks},
                   kronecker_damping=_KRONECKER_DAMPING_NAMES.get(
                       s.config.kronecker_damping, str(s.config.kronecker_damping)),
                   factor_refresh_period=s.config.factor_refresh_period or 1,
                   float32_products=s.config.float32_products)

    @property
    def layered(self):
        return bool(self.blocks)

    def block_slices(self):
        """Block name -> the slice of the parameter vector (and of a step's vectors)
        holding that block's parameters, in layout order."""
        slices, start = {}, 0
        for block in self.blocks:
            slices[block.name] = slice(start, start + block.parameter_count)
            start += block.parameter_count
        return slices


@dataclasses.dataclass(frozen=True)
class StepResult:
    """A natural-gradient step: update = -eta * natural_gradient (float64 arrays; with
    answer="update" natural_gradient is None, with answer="update_f32" too and update is
    the float32 rounding of -eta n)."""
    natural_gradient: np.ndarray   # n = (F + lambda I)^-1 g
    update: np.ndarray             # -eta n: add it to the parameters
    eta: float
    natural_norm_sq: float         # g^T n
    predicted_kl: float            # 1/2 update^T F update (undamped F)
    solver: object                 # fisherd.v1.SolverSummary
    # Streamed answers of layered sessions: block name -> slice of the vectors, as the
    # server's chunks named them (None for unary answers; see Session.block_slices).
    block_ranges: object = None

    @property
    def method(self):
        """"cholesky", "woodbury", "diagonal", "kronecker" or "layered"."""
        return self.solver.method

    @property
    def kronecker_damping(self):
        """"exact" or "factored"; "" when no Kronecker block took part."""
        return self.solver.kronecker_damping

    @property
    def factor_age_steps(self):
        return self.solver.factor_age_steps

    @property
    def blocks(self):
        """Layered sessions: one fisherd.v1.SolverSummary per block (.block names it),
        in layout order."""
        return list(self.solver.blocks)

    def block_summary(self, name):
        for summary in self.solver.blocks:
            if summary.block == name:
                return summary
        raise KeyError(name)


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
    """The estimate from GetFisher: `matrix` is dim x dim (dense sessions, DENSE and
    LOW_RANK blocks, a Kronecker block's factor), the diagonal (diagonal sessions and
    DIAGONAL blocks), or None when not requested; `summary` a fisherd.v1.FisherSummary."""
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
    deadline of one StreamScores call (a longer stream_scores call reopens streams) and of
    one StreamNaturalGradientStep call.
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
        # Steps go both ways pre-serialized: gradient chunks appended as packed fields,
        # answer chunks read straight from the wire into the result arrays (_StepAnswer).
        self._step_stream_call = self._channel.stream_stream(
            _STREAM_STEP, request_serializer=None, response_deserializer=None)
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
    def create_session(self, session_id, dim=None, representation=None, centered=False,
                       decay=1.0, damping=0.0, *, blocks=None, kronecker_damping=None,
                       factor_refresh_period=0, float32_products=False):
        """Creates sessions/{session_id}; returns that name.

        Without blocks: one F of `dim`, representation "dense" (the default) or "diagonal".
        With blocks (fisherd.Block or dicts of its fields, e.g. {"name": "fc1", "kind":
        "kronecker", "in_features": 784, "out_features": 256, "bias": True}): a layered
        session whose F is block-diagonal and whose parameter vector is the blocks'
        parameters in this order; dim may be left out (the server fills in the total).
        kronecker_damping: "exact" (the server's default) or "factored".
        factor_refresh_period: recompute a Kronecker factor's eigendecomposition at most
        every this many steps (0 or 1: whenever the factor changed).
        float32_products: large batches are multiplied in float32 (dense sessions, dense
        blocks, Kronecker factors; ~1e-7 relative error in F) and Kronecker blocks take
        their steps' eigenbasis products in float32 (about half the step's time on large
        layers; SessionConfig.float32_products says how n is rounded)."""
        if not isinstance(float32_products, bool):
            raise invalid_argument(f"float32_products must be True or False, got "
                                   f"{float32_products!r}")
        config = pb.SessionConfig(centered=bool(centered), decay=float(decay),
                                  damping=float(damping), float32_products=float32_products)
        if blocks:
            if representation not in (None, "layered"):
                raise invalid_argument("a session with blocks is layered: leave representation "
                                       f"out (or pass \"layered\"), got {representation!r}")
            config.representation = pb.REPRESENTATION_LAYERED
            config.blocks.extend(Block.of(b).to_proto() for b in blocks)
            config.dim = 0 if dim is None else _count(dim, "dim")
        else:
            representation = "dense" if representation is None else representation
            if representation not in _REPRESENTATIONS:
                raise invalid_argument(f"representation must be one of "
                                       f"{sorted(_REPRESENTATIONS)} (or \"layered\" with "
                                       f"blocks), got {representation!r}")
            if dim is None:
                raise invalid_argument("dim is required for a session without blocks")
            config.representation = _REPRESENTATIONS[representation]
            config.dim = _count(dim, "dim")
        if not (kronecker_damping is None or isinstance(kronecker_damping, str)) or \
                kronecker_damping not in _KRONECKER_DAMPINGS:
            raise invalid_argument("kronecker_damping must be \"exact\" or \"factored\", got "
                                   f"{kronecker_damping!r}")
        config.kronecker_damping = _KRONECKER_DAMPINGS[kronecker_damping]
        period = _count(factor_refresh_period, "factor_refresh_period")
        if period >= 1 << 32:
            raise invalid_argument(f"factor_refresh_period must be < 2^32, got {period}")
        config.factor_refresh_period = period
        session = self._unary(self._stub.CreateSession,
                              pb.CreateSessionRequest(session_id=session_id, config=config),
                              session_id)
        return session.name

    def get_session(self, name):
        name = session_name(name)
        return Session.from_proto(
            self._unary(self._stub.GetSession, pb.GetSessionRequest(name=name), name))

    def list_sessions(self):
        response = self._unary(self._stub.ListSessions, pb.ListSessionsRequest())
        return [Session.from_proto(s) for s in response.sessions]

    def delete_session(self, name):
        name = session_name(name)
        self._unary(self._stub.DeleteSession, pb.DeleteSessionRequest(name=name), name)
        with self._lock:
            for key in [k for k in self._workers if k[0] == name]:
                del self._workers[key]

    # --- steps and products -----------------------------------------------------------
    def step(self, session, gradient, *, kl_budget=0.0, learning_rate=0.0, damping=None,
             skip_decay=False, stream=None, gradient_dtype="float64", chunk_values=None,
             answer="full"):
        """Natural-gradient step for `gradient` (of the loss being minimized), of any size.

        eta = learning_rate without a budget; with kl_budget c > 0, eta = sqrt(2c / g^T n),
        capped by learning_rate when that is > 0; both 0: eta = 1. damping overrides the
        session's lambda. Unless skip_decay, the server then decays the statistics.

        A gradient of up to 131072 values goes in one NaturalGradientStep call, a larger
        one through StreamNaturalGradientStep in chunks of 2 MiB (each message well under
        even gRPC's default 4 MiB limit), the answer reassembled into float64 arrays. stream:
        True or False forces one form. gradient_dtype "float32" sends the gradient rounded
        to float32 (half the bytes when streamed). chunk_values: values per streamed chunk
        (default 262144 doubles or 524288 floats). answer: "full" (n and the update),
        "update" (the update alone, half the answer's bytes; natural_gradient is None) or
        "update_f32" (the update rounded to float32 by the server, a quarter of the bytes,
        returned as a float32 array; for a float32 model that rounds it anyway)."""
        name = session_name(session)
        if answer not in _STEP_ANSWERS:
            raise invalid_argument(f"answer must be one of {sorted(_STEP_ANSWERS)}, got "
                                   f"{answer!r}")
        dtype = _gradient_dtype(gradient_dtype)
        values = np.ascontiguousarray(_as_vector(gradient, "gradient"), dtype="<f8")
        if dtype == np.float32:
            values = _round_to_float32(values)
        header = pb.NaturalGradientStepRequest(
            session=name, kl_budget=float(kl_budget), learning_rate=float(learning_rate),
            skip_decay=bool(skip_decay), answer=_STEP_ANSWERS[answer])
        if damping is not None:
            header.damping = float(damping)
        if stream is None:
            stream = values.shape[0] > _UNARY_STEP_VALUES
        if stream:
            return self._stream_step(header, values, chunk_values)
        header.gradient.extend(values.astype(np.float64))
        response = self._unary(self._stub.NaturalGradientStep, header, name)
        dim = values.shape[0]
        form = _StepForm(header.answer)
        if (len(response.natural_gradient), len(response.update),
                len(response.update_f32)) != form.sizes(dim):
            raise _protocol_error(
                "NaturalGradientStep",
                f"{name}: answer {answer!r} for dim {dim} carries "
                f"{len(response.natural_gradient)} natural_gradient values, "
                f"{len(response.update)} update values and {len(response.update_f32)} "
                "update_f32 bytes")
        natural = np.array(response.natural_gradient, dtype=np.float64) if form.full else None
        update = (np.frombuffer(response.update_f32, dtype="<f4").astype(np.float32)
                  if form.f32 else np.array(response.update, dtype=np.float64))
        return StepResult(natural_gradient=natural, update=update,
                          eta=response.eta, natural_norm_sq=response.natural_norm_sq,
                          predicted_kl=response.predicted_kl, solver=response.solver)

    def _stream_step(self, header, values, chunk_values):
        """StreamNaturalGradientStep: the header and the first chunk, then one chunk per
        message (pre-serialized: the values' bytes appended as a packed field), then the
        answer's chunks copied into place and checked to cover the gradient's length."""
        width = values.dtype.itemsize
        per_chunk = _STEP_CHUNK_BYTES // width if chunk_values is None else int(chunk_values)
        if per_chunk < 1:
            raise invalid_argument(f"chunk_values must be >= 1, got {chunk_values!r}")
        if per_chunk * width + 4096 > self._max_message_bytes:
            raise invalid_argument(f"chunks of {per_chunk} values exceed max_message_bytes "
                                   f"{self._max_message_bytes}; lower chunk_values")
        tag = b"\x22" if width == 4 else b"\x1a"  # gradient_f32 (4) or gradient (3), packed
        first = pb.StreamNaturalGradientStepRequest(header=header).SerializeToString()

        def requests():
            if values.shape[0] == 0:
                yield first
            for start in range(0, values.shape[0], per_chunk):
                chunk = values[start:start + per_chunk]
                head = first if start == 0 else b"\x10" + _varint(start)  # offset (2)
                yield b"".join([head, tag, _varint(chunk.nbytes), chunk.data])

        answer = _StepAnswer(header.session, values.shape[0], header.answer)
        responses = None
        try:
            responses = self._step_stream_call(requests(), timeout=self._stream_timeout,
                                               metadata=self._call_metadata(header.session),
                                               wait_for_ready=self._wait_for_ready)
            for data in responses:
                answer.add(data)
        except grpc.RpcError as error:
            raise FisherdError.from_rpc_error(error) from None
        except BaseException:
            if responses is not None:
                responses.cancel()
            raise
        return answer.result()

    def fisher_vector_product(self, session, vector):
        """(F v, 1/2 v^T F v) with the undamped estimate F."""
        name = session_name(session)
        response = self._unary(self._stub.FisherVectorProduct, pb.FisherVectorProductRequest(
            session=name, vector=_as_vector(vector, "vector")), name)
        return np.array(response.product, dtype=np.float64), response.quadratic_kl

    def get_fisher(self, session, include_matrix=True, include_eigenvalues=False, *,
                   block=None, factor=None):
        """The estimate F and its summary (a fisherd.v1.FisherSummary).

        matrix: dense sessions, DENSE and LOW_RANK blocks dim x dim; diagonal sessions and
        DIAGONAL blocks the diagonal; with `factor` ("activations" or "output_gradients")
        that factor of a Kronecker block, A ((in_features + bias) x (in_features + bias),
        the appended 1 included) or G (out_features x out_features). A layered session's
        matrix needs a block: without one, pass include_matrix=False for the summary of the
        whole block-diagonal F."""
        request = pb.GetFisherRequest(session=session_name(session),
                                      include_matrix=include_matrix,
                                      include_eigenvalues=include_eigenvalues,
                                      block=_block_name(block), factor=_factor(factor))
        try:
            messages = list(self._stub.GetFisher(request, timeout=self._timeout,
                                                 metadata=self._call_metadata(request.session),
                                                 wait_for_ready=self._wait_for_ready))
        except grpc.RpcError as error:
            raise FisherdError.from_rpc_error(error) from None
        return _assemble_fisher(messages, include_matrix)

    # --- scores -----------------------------------------------------------------------
    def stream_scores(self, session, scores, weights=None, worker_id=None, rows_per_batch=None,
                      max_in_flight=8, *, block=None, factor=None):
        """Streams score rows into `session` and returns once the server applied them all.

        scores: rows x dim, any real dtype or anything np.asarray accepts (a 1-D array is
        one row); sent as little-endian float32. weights: None (all 1) or one >= 0 per row.
        block: a layered session's block the rows feed (required there); their width is
        the block's dim, or for a Kronecker block the factor's: factor "activations" (rows
        of in_features values: the layer's inputs) or "output_gradients" (out_features
        values). worker_id: the sender's identity (default: one per Client); the batches
        are numbered after the worker's last applied sequence (asked from the server the
        first time this Client streams for the worker), one sequence per worker across all
        blocks of the session. Up to max_in_flight batches of rows_per_batch rows (default
        256, fewer for rows wider than 2048 values so a batch stays at about 2 MiB) are
        unacknowledged at once; a broken stream is reopened (with backoff, up to
        max_retries times without progress) and every unacknowledged batch resent. Returns
        a StreamResult (None for zero rows). On a FisherdError, batches acknowledged before
        it stay applied.
        """
        name = session_name(session)
        worker = self._worker(worker_id)
        block = _block_name(block)
        factor = _factor(factor)
        rows = _as_score_rows(scores)
        count, dim = rows.shape
        weight_rows = _as_weights(weights, count)
        if count == 0:
            return None
        segment = self._segment(rows, weight_rows, block, factor, rows_per_batch)
        if max_in_flight < 1:
            raise invalid_argument("rows_per_batch and max_in_flight must be >= 1")

        def check(state):
            # A layered session's blocks have their own widths: the server checks them
            # (and names the block).
            if not block and not state[2] and dim != state[1]:
                raise invalid_argument(f"scores have {dim} columns but {name} has dim {state[1]}")
        return self._stream_segments(name, worker, [segment], max_in_flight, check)

    def stream_blocks(self, session, parts, worker_id=None, rows_per_batch=None,
                      max_in_flight=8):
        """Streams the rows of several blocks and factors over one StreamScores call.

        parts: an iterable of (block, factor, scores) or (block, factor, scores, weights)
        tuples, each as stream_scores' arguments of those names (factor None for blocks
        that are not Kronecker). The parts go out in order, each cut into batches of its
        own (a batch never mixes two parts), numbered in the worker's one sequence space,
        with stream_scores' flow control, reconnects and resends. A layered session's
        worker that feeds every block once per training iteration thus opens one stream
        per iteration instead of one per block and factor. Parts with zero rows are
        skipped. Returns a StreamResult over all parts (rows and batches summed), or None
        when no part has rows. Every part is validated before anything is sent."""
        name = session_name(session)
        worker = self._worker(worker_id)
        segments = self._block_segments(parts, rows_per_batch, max_in_flight)
        if not segments:
            return None
        return self._stream_segments(name, worker, segments, max_in_flight, None)

    def _block_segments(self, parts, rows_per_batch, max_in_flight):
        """stream_blocks' parts, validated, as segments (those with rows). Nothing is sent,
        so a caller spreading parts over several clients (ShardedLayeredSession) checks
        them all before any stream opens."""
        segments = []
        for index, part in enumerate(parts):
            if not isinstance(part, (tuple, list)) or len(part) not in (3, 4):
                raise invalid_argument(f"parts[{index}] must be (block, factor, scores) or "
                                       f"(block, factor, scores, weights), got {type(part)}")
            block, factor, scores = _block_name(part[0]), _factor(part[1]), part[2]
            rows = _as_score_rows(scores)
            weight_rows = _as_weights(part[3] if len(part) == 4 else None, rows.shape[0])
            if rows.shape[0]:
                segments.append(self._segment(rows, weight_rows, block, factor,
                                              rows_per_batch))
        if max_in_flight < 1:
            raise invalid_argument("max_in_flight must be >= 1")
        return segments

    def _worker(self, worker_id):
        worker = worker_id if worker_id is not None else self.default_worker_id
        if not isinstance(worker, str) or not worker:
            raise invalid_argument("worker_id must be a non-empty string")
        return worker

    def _segment(self, rows, weights, block, factor, rows_per_batch):
        dim = rows.shape[1]
        if rows_per_batch is None:
            rows_per_batch = max(1, min(_DEFAULT_ROWS_PER_BATCH, _BATCH_BYTES // (4 * (dim + 1))))
        rows_per_batch = int(rows_per_batch)
        if rows_per_batch < 1:
            raise invalid_argument("rows_per_batch and max_in_flight must be >= 1")
        if 4 * rows_per_batch * (dim + 1) + 1024 > self._max_message_bytes:
            raise invalid_argument(f"a batch of {rows_per_batch} rows at dim {dim} exceeds "
                                   f"max_message_bytes {self._max_message_bytes}; lower "
                                   "rows_per_batch")
        return _Segment(rows, weights, block, factor, rows_per_batch)

    def _stream_segments(self, name, worker, segments, max_in_flight, check):
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
                state = [info.worker_sequences.get(worker, 0) + 1, info.dim, info.layered]
            if check is not None:
                check(state)
            result = _StreamRun(self, name, worker, segments, max_in_flight, state[0]).run()
            with self._lock:
                self._workers[key] = [state[0] + result.batches, state[1], state[2]]
            return result
        except BaseException:
            with self._lock:  # ask the server again next time
                self._workers.pop(key, None)
            raise
        finally:
            with self._lock:
                self._busy.discard(key)

    # --- internals ----------------------------------------------------------------------
    def _call_metadata(self, session=None):
        """The authorization metadata, plus the routing header for a call naming
        `session` (an id or a resource name)."""
        bare = _routing_id(session) if session is not None else None
        if bare is None:
            return self._metadata
        return (self._metadata or ()) + ((SESSION_HEADER, bare),)

    def _unary(self, method, request, session=None):
        try:
            return method(request, timeout=self._timeout,
                          metadata=self._call_metadata(session),
                          wait_for_ready=self._wait_for_ready)
        except grpc.RpcError as error:
            raise FisherdError.from_rpc_error(error) from None


_Segment = collections.namedtuple("_Segment", "rows weights block factor per_batch")


class _StreamRun:
    """The state of one stream_scores (or stream_blocks) call: the batches of one or more
    segments (rows for one block and factor), numbered from first_sequence."""

    def __init__(self, client, name, worker, segments, max_in_flight, first_sequence):
        self.client = client
        self.name = name
        self.worker = worker
        self.segments = segments
        self.plan = []  # (segment, start, end) per batch
        for segment in segments:
            count = segment.rows.shape[0]
            self.plan.extend((segment, start, min(start + segment.per_batch, count))
                             for start in range(0, count, segment.per_batch))
        self.row_count = sum(segment.rows.shape[0] for segment in segments)
        self.max_in_flight = max_in_flight
        self.first = first_sequence
        self.total = len(self.plan)
        self.scratch = {}  # width -> float32 conversion buffer for inputs of other dtypes
        self.highest_sent = first_sequence - 1
        self.unacked = collections.deque()   # [sequence, encoded batch, transmissions]
        self.resent = 0
        self.duplicates = 0
        self.streams = 0
        self.last_ack = None

    def encode(self, index):
        segment, start, end = self.plan[index]
        sequence = self.first + index
        head = pb.ScoreBatch(session=self.name, worker_id=self.worker, sequence=sequence,
                             rows=end - start, block=segment.block,
                             factor=segment.factor).SerializeToString()
        block = segment.rows[start:end]
        if block.dtype != np.dtype("<f4") or not block.flags.c_contiguous:
            # Convert into one reused buffer (join below copies it into the message):
            # a fresh allocation per batch would page-fault on every batch.
            width = segment.rows.shape[1]
            scratch = self.scratch.get(width)
            if scratch is None or scratch.shape[0] < end - start:
                scratch = self.scratch[width] = np.empty((segment.per_batch, width),
                                                         dtype="<f4")
            with np.errstate(over="ignore"):  # validated: at most rounds to float32's max
                np.copyto(scratch[:end - start], block, casting="unsafe")
            block = scratch[:end - start]
        parts = [head, b"\x2a", _varint(block.nbytes), block.data]
        if segment.weights is not None:
            w = segment.weights[start:end]
            parts += [b"\x3a", _varint(w.nbytes), w.data]
        return sequence, b"".join(parts)

    def open(self):
        client = self.client
        stream = _Stream(client._stream_call, client._stream_timeout,
                         client._call_metadata(self.name))
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
                            rows=self.row_count, batches=self.total,
                            batches_resent=self.resent, duplicate_acks=self.duplicates,
                            streams_opened=self.streams)


class _Broken(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class _StepForm:
    """What a StepAnswer puts in the answer's vectors."""

    def __init__(self, answer):
        self.full = answer == pb.STEP_ANSWER_FULL
        self.f32 = answer == pb.STEP_ANSWER_UPDATE_F32
        self.name = pb.StepAnswer.Name(answer)

    def sizes(self, dim):
        """(natural_gradient values, update values, update_f32 bytes) for dim values."""
        return (dim if self.full else 0, 0 if self.f32 else dim, 4 * dim if self.f32 else 0)


class _StepAnswer:
    """Reassembles a StreamNaturalGradientStep answer: the header first, then chunks
    [offset, offset + size) of the vectors the request's answer form asked for,
    consecutive from 0 to dim, each inside one block (named) of a layered session."""

    def __init__(self, name, dim, answer=pb.STEP_ANSWER_FULL):
        self.name = name
        self.dim = dim
        self.form = _StepForm(answer)
        self.header = None
        self.natural = np.empty(dim, dtype=np.float64) if self.form.full else None
        self.update = np.empty(dim, dtype=np.float32 if self.form.f32 else np.float64)
        self.filled = 0
        self.messages = 0
        self.ranges = {}      # block name -> [start, end)
        self.last_block = None

    def error(self, message):
        return _protocol_error("StreamNaturalGradientStep", f"{self.name}: {message}")

    def add(self, data):
        try:
            header, block, offset, natural, update, update_f32 = _parse_step_response(data)
        except (ValueError, IndexError, UnicodeDecodeError) as error:
            raise self.error(f"message {self.messages} is malformed: {error}") from None
        first = self.messages == 0
        self.messages += 1
        if first:
            if header is None:
                raise self.error("the first message carries no header")
            if header.natural_gradient or header.update or header.update_f32:
                raise self.error("the header carries vectors")
            self.header = header
        elif header is not None:
            raise self.error(f"message {self.messages - 1} repeats the header")
        form = self.form
        if ((not form.full and natural.shape[0]) or (form.f32 and update.shape[0]) or
                (not form.f32 and update_f32.shape[0])):
            raise self.error(f"the chunk at {offset} carries {natural.shape[0]} natural-gradient "
                             f"values, {update.shape[0]} update values and "
                             f"{update_f32.shape[0]} update_f32 values, not the form "
                             f"{form.name} asked for")
        size = (natural.shape[0] if form.full else update_f32.shape[0] if form.f32
                else update.shape[0])
        if form.full and update.shape[0] != size:
            raise self.error(f"the chunk at {offset} has {size} natural-gradient values but "
                             f"{update.shape[0]} update values")
        if size == 0:
            if first or offset == self.filled:
                return
            raise self.error(f"an empty chunk at {offset} after {self.filled} values")
        if offset != self.filled:
            raise self.error(f"a chunk at offset {offset} follows {self.filled} values (chunks "
                             "must be consecutive)")
        if offset + size > self.dim:
            raise self.error(f"the chunk [{offset}, {offset + size}) exceeds the gradient's "
                             f"{self.dim} values")
        if form.full:
            self.natural[offset:offset + size] = natural
        self.update[offset:offset + size] = update_f32 if form.f32 else update
        self.filled += size
        if block:
            if block == self.last_block:
                self.ranges[block][1] = self.filled
            elif block in self.ranges:
                raise self.error(f"block {block} comes back at {offset} after other blocks")
            else:
                self.ranges[block] = [offset, self.filled]
            self.last_block = block

    def result(self):
        if self.header is None:
            raise self.error("the server ended the call without an answer")
        if self.filled != self.dim:
            raise self.error(f"the chunks cover {self.filled} of the gradient's {self.dim} "
                             "values")
        h = self.header
        ranges = {k: slice(a, b) for k, (a, b) in self.ranges.items()} if self.ranges else None
        return StepResult(natural_gradient=self.natural, update=self.update, eta=h.eta,
                          natural_norm_sq=h.natural_norm_sq, predicted_kl=h.predicted_kl,
                          solver=h.solver, block_ranges=ranges)


def _read_varint(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("a varint longer than 10 bytes")


def _parse_step_response(data):
    """StreamNaturalGradientStepResponse from its wire bytes: (header or None, block,
    offset, natural_gradient, update, update_f32), the first two vectors as float64
    arrays and update_f32 as a float32 array, viewing `data` (packed, as proto3 writes
    them; the unpacked encoding is read too)."""
    view = memoryview(data)
    pos, end = 0, len(data)
    header, block, offset = None, "", 0
    vectors = {4: [], 5: []}
    floats = []
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise ValueError(f"field {field} runs past the message's end")
            payload = view[pos:pos + length]
            pos += length
            if field == 1:
                header = pb.NaturalGradientStepResponse.FromString(bytes(payload))
            elif field == 2:
                block = bytes(payload).decode()
            elif field == 6:
                if length % 4:
                    raise ValueError(f"update_f32 of {length} bytes")
                floats.append(np.frombuffer(payload, dtype="<f4"))
            elif field in vectors:
                if length % 8:
                    raise ValueError(f"packed doubles of {length} bytes")
                vectors[field].append(np.frombuffer(payload, dtype="<f8"))
        elif wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 3:
                offset = value
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError(f"field {field} runs past the message's end")
            if field in vectors:
                vectors[field].append(np.frombuffer(view[pos:pos + 8], dtype="<f8"))
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire} of field {field}")
    if pos != end:
        raise ValueError("the last field runs past the message's end")
    natural, update, update_f32 = (
        (np.concatenate(v) if len(v) > 1 else v[0] if v else np.empty(0))
        for v in (vectors[4], vectors[5], floats))
    return header, block, offset, natural, update, update_f32


def _assemble_fisher(messages, include_matrix):
    """The Fisher of a GetFisher answer, checked as the C++ client checks it: a summary
    first, then row blocks that follow each other from row 0, each with row_count rows
    of the width the summary implies (dim values, or one for a diagonal), none past dim,
    and (when the matrix was asked for) together exactly dim rows. A violation is a
    FisherdError(DATA_LOSS) naming it."""
    def violation(message):
        return _protocol_error("GetFisher", message, grpc.StatusCode.DATA_LOSS)
    if not messages:
        raise violation("empty response stream")
    if not messages[0].HasField("summary"):
        raise violation("the first message carries no summary")
    summary = messages[0].summary
    dim = summary.dim
    if summary.block:
        vector = (summary.factor == pb.FACTOR_UNSPECIFIED and
                  summary.block_kind == pb.BLOCK_KIND_DIAGONAL)
    else:
        vector = summary.representation == pb.REPRESENTATION_DIAGONAL
    width = 1 if vector else dim
    parts, rows = [], 0
    for message in messages:
        if message.row_count == 0 and not message.values:
            continue
        if message.row_offset != rows:
            raise violation(f"block starts at row {message.row_offset}, expected {rows}")
        if len(message.values) != message.row_count * width:
            raise violation(f"block at row {message.row_offset} has {len(message.values)} "
                            f"values for {message.row_count} rows of {width}")
        if rows + message.row_count > dim:
            raise violation(f"rows [{rows}, {rows + message.row_count}) exceed dim {dim}")
        parts.append(np.array(message.values, dtype=np.float64))
        rows += message.row_count
    if not include_matrix:
        return Fisher(summary=summary, matrix=None)
    if rows != dim:
        raise violation(f"stream ended after {rows} of {dim} rows")
    values = np.concatenate(parts) if parts else np.empty(0)
    return Fisher(summary=summary, matrix=values if vector else values.reshape(dim, dim))


def _protocol_error(method, message, code=grpc.StatusCode.INTERNAL):
    return FisherdError(code, f"{method} answer does not follow fisherd.v1: {message}")


def _block_name(block):
    if block is None:
        return ""
    if not isinstance(block, str):
        raise invalid_argument(f"block must be a block's name (a string), got {block!r}")
    return block


def _factor(factor):
    if not (factor is None or isinstance(factor, str)) or factor not in _FACTORS:
        raise invalid_argument("factor must be \"activations\", \"output_gradients\" or None, "
                               f"got {factor!r}")
    return _FACTORS[factor]


def _as_vector(values, what):
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"{what} is not a numeric vector: {error}") from None
    return array


def _gradient_dtype(gradient_dtype):
    """np.float64 or np.float32 for a step's gradient_dtype; INVALID_ARGUMENT otherwise."""
    try:
        dtype = np.dtype(gradient_dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise invalid_argument(f"gradient_dtype must be float64 or float32, got "
                               f"{gradient_dtype!r}")
    return dtype


def _round_to_float32(values):
    """A float64 gradient rounded to little-endian float32, as it goes on the wire;
    INVALID_ARGUMENT naming the first finite value beyond float32 range."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = values.astype("<f4")
    overflow = ~np.isfinite(rounded) & np.isfinite(values)
    if overflow.any():
        index = int(np.argmax(overflow))
        raise invalid_argument(f"gradient[{index}] = {values[index]} is beyond float32 "
                               "range; send it as float64")
    return rounded


def _pem(value):
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
