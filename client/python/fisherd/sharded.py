"""fisherd.ShardedLayeredSession: one model's layered session spread over several fisherd
replicas (independent fisherd processes, one fisherd.Client each).

A layered session's F is block-diagonal, so its blocks never need each other: each
replica can hold some of them as an ordinary layered session, and a step is the blocks'
solves put together. This module fixes how; the C++ client implements the same contract,
so that workers in either language agree on where every block lives and on every number.
docs/design.md section 7 ("Sharded layered sessions") explains why the result equals the
one-session step.

Contract
--------
Blocks and shards. `blocks` is the whole layout in its global order (the order of the
parameter vector); `clients` are the n replicas, shard k on clients[k] (k from 0).

Cost of a block: the work its solve costs when its factors are refreshed.
  KRONECKER, a = in_features + bias (A's side, the bias column included),
             g = out_features (G's side):      a^3 + g^3  (two eigendecompositions,
                                                            KAISA's balancing rule)
  DENSE of dim n:                              n^3        (a Cholesky factorization)
  LOW_RANK of dim n and max_rows r:            n * r^2    (the Woodbury products)
  DIAGONAL of dim n:                           n
Costs and shard totals are unsigned 64-bit integers, every product and sum saturating
at 2^64 - 1 (so the cost is min(exact value, 2^64 - 1)): any layout the server accepts
(sizes up to 2^40) has a defined cost, and no realistic one comes near the bound.

Assignment (greedy longest-processing-time): sort the blocks by cost, largest first,
stably (equal costs keep layout order); give each in turn to the shard whose total so far
is smallest (equal totals: the lowest shard index), and add its cost to that total.
Within a shard the blocks keep their global layout order. Every shard must receive at
least one block (costs are >= 1, so at least n blocks are needed); otherwise
INVALID_ARGUMENT before any call.

Shard sessions. Shard k is the ordinary layered session "{session_id}.{k}-of-{n}" on
clients[k], holding its blocks, created with the same options (centered, decay,
damping, kronecker_damping, factor_refresh_period, float32_products). Every shard id
must be a valid session id (1-63 characters of [a-zA-Z0-9_.-], starting with a letter
or digit): a session_id that makes one longer is INVALID_ARGUMENT before any call.
Attaching (create=False, or ShardedLayeredSession.attach) recomputes the assignment from
the same layout and number of replicas and requires every shard's actual layout
(GetSession) to equal its assigned blocks exactly (names, kinds, sizes, order) and the
shards to agree on their options; a difference names the shard and its replica.

Rows. A block's rows go to its shard's session through that shard's client, exactly as
Client.stream_blocks sends them (one worker_id per process; each shard is a session of
its own, so it has its own sequence space for that worker). The shards are fed in
parallel, one thread each, so one slow replica does not hold up the others.

Step, for the full gradient g (total parameters, global layout order):
  g_k   = the slices of g of shard k's blocks, concatenated in shard order;
  every shard, in parallel, takes an ordinary step of g_k with learning_rate = 0 and
  kl_budget = 0 (so its eta is 1 and its update -n_k) and the caller's damping and
  skip_decay; it answers n_k, g_k^T n_k and predicted_kl_k = 1/2 n_k^T F_k n_k;
  n              = the n_k put back into global order;
  g^T n          = sum over k (ascending) of g_k^T n_k;
  eta            = the server's rule: without a budget (kl_budget = 0), or when
                   g^T n <= 0, learning_rate if > 0, else 1; with kl_budget c > 0,
                   sqrt(2c / g^T n), then min(eta, learning_rate) if learning_rate > 0;
  update         = -eta n;
  predicted_kl   = eta^2 * sum over k of predicted_kl_k  (F is block-diagonal across
                   shards, so n^T F n is the sum of the shards' n_k^T F_k n_k).
  The solver summary is the layered one over all blocks: method "layered", one summary
  per block in global layout order, residual sqrt(sum_b (r_b |g_b|)^2) / |g|,
  factorization_cached when every non-diagonal block reused its factorization,
  factor_age_steps the maximum over blocks, kronecker_damping that of the last Kronecker
  block, damping the lambda used, seconds the slowest shard's (they run in parallel).
FisherVectorProduct: v split as g is, every shard's F_k v_k in parallel, the products
put back in global order, quadratic_kl the sum of the shards' 1/2 v_k^T F_k v_k.

Errors. A failing shard fails the whole call with its status code and a message
starting "shard {shard id} on replica {target}: " (the lowest failing shard when several
fail). Nothing is rolled back across replicas: when a step fails on one shard, the others
may have taken theirs (counted the step, decayed), and rows streamed to the other shards
stay applied, as acknowledged batches do in one session.
"""
import concurrent.futures
import dataclasses
import math
import re
import time

import grpc
import numpy as np

from fisherd.client import (Block, BlockStats, Fisher, Session, StepResult, _as_vector,
                            _block_name, _gradient_dtype, _round_to_float32)
from fisherd.errors import FisherdError, invalid_argument
from fisherd.v1 import fisher_pb2 as pb

__all__ = ["ShardedLayeredSession", "ShardedStepResult", "ShardedStreamResult",
           "assign_blocks", "block_cost", "shard_session_id"]

_U64_MAX = (1 << 64) - 1
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def block_cost(block):
    """The balancing cost of one block (see the module docstring), saturating at 2^64 - 1."""
    block = Block.of(block)
    if block.kind == "kronecker":
        a = block.in_features + int(bool(block.bias))
        g = block.out_features
        cost = a ** 3 + g ** 3
    elif block.kind == "dense":
        cost = block.dim ** 3
    elif block.kind == "low_rank":
        cost = block.dim * block.max_rows ** 2
    elif block.kind == "diagonal":
        cost = block.dim
    else:
        raise invalid_argument(f"block {block.name!r}: kind must be one of "
                               f"['dense', 'diagonal', 'kronecker', 'low_rank'], got "
                               f"{block.kind!r}")
    # Saturating at every step equals clamping the exact value: all terms are >= 0.
    return min(cost, _U64_MAX)


def assign_blocks(blocks, shards):
    """The shard (0 .. shards - 1) of every block, in layout order: greedy
    longest-processing-time over block_cost (see the module docstring)."""
    blocks = [Block.of(b) for b in blocks]
    shards = int(shards)
    if shards < 1:
        raise invalid_argument(f"a sharded session needs at least one replica, got {shards}")
    costs = [block_cost(b) for b in blocks]
    order = sorted(range(len(blocks)), key=lambda i: -costs[i])  # sorted() is stable
    totals = [0] * shards
    assignment = [0] * len(blocks)
    for i in order:
        k = min(range(shards), key=lambda s: totals[s])  # min() keeps the first of equals
        assignment[i] = k
        totals[k] = min(totals[k] + costs[i], _U64_MAX)
    return assignment


def shard_session_id(session_id, k, shards):
    """The id of shard k of `shards`: "{session_id}.{k}-of-{shards}"."""
    return f"{session_id}.{k}-of-{shards}"


@dataclasses.dataclass(frozen=True)
class ShardedStepResult(StepResult):
    """A StepResult combined over the shards (global layout order); `shards` holds each
    shard's own answer (eta 1), block_ranges every block's slice of the vectors."""
    shards: tuple = ()


@dataclasses.dataclass(frozen=True)
class ShardedStreamResult:
    """What one ShardedLayeredSession.stream_blocks call delivered: totals, and per shard
    its Client.stream_blocks result (None for a shard that got no rows)."""
    rows: int
    batches: int
    batches_resent: int
    duplicate_acks: int
    streams_opened: int
    shards: tuple


class ShardedLayeredSession:
    """One layered session spread over several fisherd replicas (see the module
    docstring for the contract).

    clients: one fisherd.Client per replica (shard k lives on clients[k]; the caller
    keeps ownership and closes them). session_id: the sharded session's id; shard k is
    the session "{session_id}.{k}-of-{n}". blocks: the whole layout, in global order
    (fisherd.Block or dicts of its fields). create: True creates the shard sessions
    (with centered, decay, damping, kronecker_damping, factor_refresh_period,
    float32_products as Client.create_session takes them); False attaches to existing
    ones, waiting up to attach_timeout seconds for all of them to appear, and checks
    their layouts.
    """

    def __init__(self, clients, session_id, blocks, *, create=True, centered=False,
                 decay=1.0, damping=0.0, kronecker_damping=None, factor_refresh_period=0,
                 float32_products=False, attach_timeout=0.0):
        if not isinstance(clients, (list, tuple)) or not clients:
            raise invalid_argument("clients must be a non-empty list of fisherd.Client, one "
                                   f"per replica, got {clients!r}")
        if not isinstance(session_id, str) or not session_id:
            raise invalid_argument(f"session_id must be a non-empty string, got {session_id!r}")
        bare = session_id[len("sessions/"):] if session_id.startswith("sessions/") else session_id
        self.clients = tuple(clients)
        self.session_id = bare
        self.name = f"sessions/{bare}"  # the sharded session's name; no replica has it
        count = len(self.clients)
        self.shard_ids = tuple(shard_session_id(bare, k, count) for k in range(count))
        for shard_id in self.shard_ids:
            if not _SESSION_ID.match(shard_id):
                raise invalid_argument(
                    f"session_id {bare!r} makes the shard id {shard_id!r}, which is not a "
                    "valid session id (1-63 characters of [a-zA-Z0-9_.-], starting with a "
                    f"letter or digit); with {count} replicas the id may have at most "
                    f"{63 - len(shard_id) + len(bare)} characters")
        self.shard_names = tuple(f"sessions/{s}" for s in self.shard_ids)

        # Normalized through the wire form, so sizes are ints and bias a bool, as the
        # blocks GetSession answers.
        self.blocks = tuple(Block.from_proto(Block.of(b).to_proto()) for b in blocks)
        if not self.blocks:
            raise invalid_argument("a sharded layered session needs blocks")
        seen = set()
        for block in self.blocks:
            if block.name in seen:
                raise invalid_argument(f"block name {block.name!r} appears twice in the layout")
            seen.add(block.name)
        self.assignment = tuple(assign_blocks(self.blocks, count))
        self.shard_blocks = tuple(
            tuple(b for b, k in zip(self.blocks, self.assignment) if k == shard)
            for shard in range(count))
        for k, shard in enumerate(self.shard_blocks):
            if not shard:
                raise invalid_argument(
                    f"{len(self.blocks)} blocks over {count} replicas leave shard "
                    f"{self.shard_ids[k]} without a block; use at most as many replicas as "
                    "blocks")
        # Global slices of every block, and per shard its blocks' (start, stop) in order.
        self._slices = {}
        start = 0
        for block in self.blocks:
            self._slices[block.name] = slice(start, start + block.parameter_count)
            start += block.parameter_count
        self.dim = start
        self._shard_of = {b.name: k for b, k in zip(self.blocks, self.assignment)}
        self._pieces = tuple(tuple((self._slices[b.name].start, self._slices[b.name].stop)
                                   for b in shard) for shard in self.shard_blocks)
        self._shard_dims = tuple(sum(stop - start for start, stop in pieces)
                                 for pieces in self._pieces)
        if create:
            self._create(dict(centered=centered, decay=decay, damping=damping,
                              kronecker_damping=kronecker_damping,
                              factor_refresh_period=factor_refresh_period,
                              float32_products=float32_products))
        else:
            self._attach(attach_timeout)

    @classmethod
    def attach(cls, clients, session_id, blocks, *, timeout=0.0):
        """Attaches to a sharded session another process created (see create=False)."""
        return cls(clients, session_id, blocks, create=False, attach_timeout=timeout)

    def __repr__(self):
        shards = ", ".join(f"{s}@{c.target}" for s, c in zip(self.shard_ids, self.clients))
        return f"ShardedLayeredSession({self.name}: {shards})"

    # --- placement -----------------------------------------------------------------------
    def shard_of(self, block):
        """The shard index holding `block` (its name)."""
        try:
            return self._shard_of[block]
        except (KeyError, TypeError):
            raise invalid_argument(f"{self.name} has no block {block!r}") from None

    def block_slices(self):
        """Block name -> its slice of the (global) parameter vector, in layout order."""
        return dict(self._slices)

    @property
    def targets(self):
        return tuple(c.target for c in self.clients)

    # --- lifetime ------------------------------------------------------------------------
    def _create(self, options):
        created = set()

        def make(k):
            def run():
                self.clients[k].create_session(self.shard_ids[k], blocks=self.shard_blocks[k],
                                               **options)
                created.add(k)
            return run
        try:
            self._run({k: make(k) for k in range(len(self.clients))})
        except BaseException:
            # Leave nothing half made: the shards this call created go again (best effort;
            # a shard that failed with ALREADY_EXISTS belongs to someone else).
            for k in sorted(created):
                try:
                    self.clients[k].delete_session(self.shard_names[k])
                except FisherdError:
                    pass
            raise

    def _attach(self, timeout):
        deadline = time.monotonic() + float(timeout)
        while True:
            try:
                infos = self.shard_sessions()
                break
            except FisherdError as error:
                if error.code != grpc.StatusCode.NOT_FOUND or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        for k, info in enumerate(infos):
            if info.blocks != self.shard_blocks[k]:
                raise invalid_argument(
                    f"shard {self.shard_ids[k]} on replica {self.clients[k].target} has blocks "
                    f"{_describe(info.blocks)} but this layout over {len(self.clients)} "
                    f"replicas assigns it {_describe(self.shard_blocks[k])}; the layout or "
                    "the replicas differ from the ones it was created with")
        first = _options(infos[0])
        for k, info in enumerate(infos[1:], start=1):
            if _options(info) != first:
                raise FisherdError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"shard {self.shard_ids[k]} on replica {self.clients[k].target} has options "
                    f"{_options(info)} but shard {self.shard_ids[0]} has {first}; the shards do "
                    "not form one session")

    def delete(self):
        """Deletes every shard session (all are tried; the first failure is raised)."""
        self._run({k: (lambda k=k: self.clients[k].delete_session(self.shard_names[k]))
                   for k in range(len(self.clients))})

    # --- rows ------------------------------------------------------------------------------
    def stream_blocks(self, parts, worker_id=None, rows_per_batch=None, max_in_flight=8):
        """Client.stream_blocks for the whole layout: parts (block, factor, scores[,
        weights]) go to their blocks' shards, in their order within each shard, every
        shard over its own stream and thread. Every part is validated before anything is
        sent. Returns a ShardedStreamResult, or None when no part has rows."""
        grouped = {}
        for index, part in enumerate(parts):
            if not isinstance(part, (tuple, list)) or len(part) not in (3, 4):
                raise invalid_argument(f"parts[{index}] must be (block, factor, scores) or "
                                       f"(block, factor, scores, weights), got {type(part)}")
            grouped.setdefault(self.shard_of(_block_name(part[0])), []).append(part)
        segments = {k: self.clients[k]._block_segments(group, rows_per_batch, max_in_flight)
                    for k, group in grouped.items()}
        segments = {k: s for k, s in segments.items() if s}
        if not segments:
            return None
        workers = {k: self.clients[k]._worker(worker_id) for k in segments}

        def feed(k):
            return lambda: self.clients[k]._stream_segments(
                self.shard_names[k], workers[k], segments[k], max_in_flight, None)
        results = self._run({k: feed(k) for k in sorted(segments)})
        per_shard = tuple(results.get(k) for k in range(len(self.clients)))
        done = [r for r in per_shard if r is not None]
        return ShardedStreamResult(rows=sum(r.rows for r in done),
                                   batches=sum(r.batches for r in done),
                                   batches_resent=sum(r.batches_resent for r in done),
                                   duplicate_acks=sum(r.duplicate_acks for r in done),
                                   streams_opened=sum(r.streams_opened for r in done),
                                   shards=per_shard)

    def stream_scores(self, scores, *, block, factor=None, weights=None, worker_id=None,
                      rows_per_batch=None, max_in_flight=8):
        """Client.stream_scores of one block's rows, on its shard."""
        k = self.shard_of(_block_name(block))
        try:
            return self.clients[k].stream_scores(
                self.shard_names[k], scores, weights=weights, worker_id=worker_id,
                rows_per_batch=rows_per_batch, max_in_flight=max_in_flight, block=block,
                factor=factor)
        except FisherdError as error:
            raise self._shard_error(k, error) from None

    # --- steps and products ----------------------------------------------------------------
    def step(self, gradient, *, kl_budget=0.0, learning_rate=0.0, damping=None,
             skip_decay=False, stream=None, gradient_dtype="float64"):
        """The natural-gradient step of the whole layout, as Client.step answers it for
        one session (see the module docstring for how it is combined)."""
        kl_budget, learning_rate = _step_size_options(kl_budget, learning_rate)
        values = self._vector(gradient, "gradient")
        dtype = _gradient_dtype(gradient_dtype)
        if dtype == np.float32:
            # exact back to float64; the shards send the same floats
            values = _round_to_float32(values).astype(np.float64)

        def solve(k):
            return lambda: self.clients[k].step(
                self.shard_names[k], self._gather(values, k), damping=damping,
                skip_decay=skip_decay, stream=stream, gradient_dtype=gradient_dtype)
        answers = self._run({k: solve(k) for k in range(len(self.clients))})
        shards = tuple(answers[k] for k in range(len(self.clients)))

        natural = np.empty(self.dim, dtype=np.float64)
        for k, answer in enumerate(shards):
            self._scatter(answer.natural_gradient, k, natural)
        natural_norm_sq = 0.0
        for answer in shards:
            natural_norm_sq += answer.natural_norm_sq
        eta = _step_size(kl_budget, learning_rate, natural_norm_sq)
        quadratic = 0.0  # sum of 1/2 n_k^T F_k n_k
        for answer in shards:
            quadratic += answer.predicted_kl
        return ShardedStepResult(
            natural_gradient=natural, update=-eta * natural, eta=eta,
            natural_norm_sq=natural_norm_sq, predicted_kl=eta * eta * quadratic,
            solver=self._solver_summary(values, shards), block_ranges=self.block_slices(),
            shards=shards)

    def fisher_vector_product(self, vector):
        """(F v, 1/2 v^T F v) over the whole layout (undamped F)."""
        values = self._vector(vector, "vector")

        def multiply(k):
            return lambda: self.clients[k].fisher_vector_product(self.shard_names[k],
                                                                  self._gather(values, k))
        answers = self._run({k: multiply(k) for k in range(len(self.clients))})
        product = np.empty(self.dim, dtype=np.float64)
        quadratic = 0.0
        for k in range(len(self.clients)):
            self._scatter(answers[k][0], k, product)
            quadratic += answers[k][1]
        return product, quadratic

    # --- reading ---------------------------------------------------------------------------
    def shard_sessions(self):
        """Every shard's fisherd.Session, in shard order (fetched in parallel)."""
        answers = self._run({k: (lambda k=k: self.clients[k].get_session(self.shard_names[k]))
                             for k in range(len(self.clients))})
        return [answers[k] for k in range(len(self.clients))]

    def get_session(self):
        """The whole session as one fisherd.Session: the layout in global order, every
        block's statistics, counts summed over shards (step_count: the smallest, the steps
        every shard took). worker_sequences is empty: each shard numbers a worker's batches
        on its own (shard_sessions() has them)."""
        infos = self.shard_sessions()
        stats = {}
        for info in infos:
            stats.update(info.block_stats)
        first = infos[0]
        weight_sum = 0.0
        for info in infos:
            weight_sum += info.weight_sum
        return Session(
            name=self.name, dim=self.dim, representation="layered", centered=first.centered,
            decay=first.decay, damping=first.damping,
            sample_count=sum(info.sample_count for info in infos), weight_sum=weight_sum,
            step_count=min(info.step_count for info in infos), worker_sequences={},
            blocks=self.blocks,
            block_stats={b.name: stats.get(b.name, BlockStats(b.name, 0, 0.0))
                         for b in self.blocks},
            kronecker_damping=first.kronecker_damping,
            factor_refresh_period=first.factor_refresh_period,
            float32_products=first.float32_products)

    def get_fisher(self, include_matrix=True, include_eigenvalues=False, *, block=None,
                   factor=None):
        """Client.get_fisher: of one block (or a Kronecker block's factor), from its shard;
        without a block, the summary of the whole block-diagonal F (include_matrix must be
        False, as for one session): traces and squared Frobenius norms add up, eigenvalue
        extremes are the shards' extremes."""
        if block is not None:
            k = self.shard_of(_block_name(block))
            try:
                return self.clients[k].get_fisher(self.shard_names[k], include_matrix,
                                                  include_eigenvalues, block=block,
                                                  factor=factor)
            except FisherdError as error:
                raise self._shard_error(k, error) from None
        if include_matrix:
            raise invalid_argument(f"{self.name} is layered: include_matrix needs a block (or "
                                   "pass include_matrix=False for the summary of the whole F)")
        if factor is not None:
            raise invalid_argument("factor needs a block")
        answers = self._run({k: (lambda k=k: self.clients[k].get_fisher(
            self.shard_names[k], False, include_eigenvalues))
            for k in range(len(self.clients))})
        parts = [answers[k].summary for k in range(len(self.clients))]
        summary = pb.FisherSummary(dim=self.dim, representation=pb.REPRESENTATION_LAYERED,
                                   centered=parts[0].centered)
        frobenius_sq = 0.0
        for part in parts:
            summary.sample_count += part.sample_count
            summary.weight_sum += part.weight_sum
            summary.trace += part.trace
            frobenius_sq += part.frobenius_norm * part.frobenius_norm
        summary.frobenius_norm = math.sqrt(frobenius_sq)
        if include_eigenvalues:
            low = min(part.min_eigenvalue for part in parts)
            high = max(part.max_eigenvalue for part in parts)
            summary.has_eigenvalues = True
            summary.min_eigenvalue = low
            summary.max_eigenvalue = high
            summary.condition_number = high / low if low > 0 else math.inf
        return Fisher(summary=summary, matrix=None)

    # --- internals -------------------------------------------------------------------------
    def _vector(self, values, what):
        array = np.ascontiguousarray(_as_vector(values, what), dtype=np.float64)
        if array.shape[0] != self.dim:
            raise invalid_argument(f"{what} has {array.shape[0]} entries, the session's dim is "
                                   f"{self.dim}")
        finite = np.isfinite(array)
        if not finite.all():
            index = int(np.argmin(finite))
            raise invalid_argument(f"{what}[{index}] is {array[index]}; values must be finite")
        return array

    def _gather(self, values, k):
        """Shard k's part of a global vector: its blocks' slices, in shard order."""
        pieces = self._pieces[k]
        if len(pieces) == 1:
            start, stop = pieces[0]
            return values[start:stop]
        return np.concatenate([values[start:stop] for start, stop in pieces])

    def _scatter(self, part, k, out):
        """Puts shard k's vector back into the global one."""
        part = np.asarray(part, dtype=np.float64)
        if part.shape[0] != self._shard_dims[k]:
            raise FisherdError(grpc.StatusCode.INTERNAL,
                               f"shard {self.shard_ids[k]} on replica {self.clients[k].target} "
                               f"answered {part.shape[0]} values for its {self._shard_dims[k]} "
                               "parameters")
        local = 0
        for start, stop in self._pieces[k]:
            out[start:stop] = part[local:local + stop - start]
            local += stop - start

    def _solver_summary(self, g, shards):
        """The layered solver summary of the whole step, as one session reports it."""
        by_block = {}
        for answer in shards:
            for summary in answer.solver.blocks:
                by_block[summary.block] = summary
        out = pb.SolverSummary(method="layered", damping=shards[0].solver.damping,
                               factorization_cached=True,
                               seconds=max(answer.solver.seconds for answer in shards))
        residual_sq = 0.0
        for block in self.blocks:
            summary = by_block.get(block.name)
            if summary is None:
                continue
            out.blocks.add().CopyFrom(summary)
            if summary.method != "diagonal":  # nothing to factor, never uncached
                out.factorization_cached = out.factorization_cached and \
                    summary.factorization_cached
            out.factor_age_steps = max(out.factor_age_steps, summary.factor_age_steps)
            if summary.kronecker_damping:
                out.kronecker_damping = summary.kronecker_damping
            part = self._slices[block.name]
            residual_sq += (summary.residual * float(np.linalg.norm(g[part]))) ** 2
        g_norm = float(np.linalg.norm(g))
        out.residual = math.sqrt(residual_sq) / g_norm if g_norm > 0 else 0.0
        return out

    def _shard_error(self, k, error):
        return FisherdError(error.code, f"shard {self.shard_ids[k]} on replica "
                                        f"{self.clients[k].target}: {error.message}")

    def _run(self, work):
        """Runs work[k]() for every shard k in `work`, each in a thread of its own (in
        the calling thread when there is one), and waits for all. Returns {k: result};
        raises the lowest failing shard's error, a FisherdError naming that shard."""
        outcomes = {}
        if len(work) == 1:
            (k, run), = work.items()
            outcomes[k] = _outcome(run)
        else:
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=len(work), thread_name_prefix="fisherd-shard") as pool:
                futures = {k: pool.submit(_outcome, run) for k, run in work.items()}
                outcomes = {k: future.result() for k, future in futures.items()}
        for k in sorted(outcomes):
            failed, value = outcomes[k]
            if failed:
                if isinstance(value, FisherdError):
                    raise self._shard_error(k, value) from None
                raise value
        return {k: value for k, (_, value) in outcomes.items()}


def _outcome(run):
    try:
        return False, run()
    except Exception as error:  # noqa: BLE001 - handed to the caller's thread
        return True, error


def _step_size_options(kl_budget, learning_rate):
    """The step's kl_budget and learning_rate, checked as the server checks them (the
    shards only ever see zeros, so the check has to happen here)."""
    out = []
    for value, what in ((kl_budget, "kl_budget"), (learning_rate, "learning_rate")):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (number >= 0.0 and math.isfinite(number)):
            raise invalid_argument(f"{what} must be finite and >= 0 (0 means unset), got "
                                   f"{value!r}")
        out.append(number)
    return out


def _step_size(kl_budget, learning_rate, natural_norm_sq):
    """eta, exactly as the server's StepSize (docs/design.md section 1)."""
    fallback = learning_rate if learning_rate > 0.0 else 1.0
    if kl_budget <= 0.0 or natural_norm_sq <= 0.0:
        return fallback
    eta = math.sqrt(2.0 * kl_budget / natural_norm_sq)
    return min(eta, learning_rate) if learning_rate > 0.0 else eta


def _options(info):
    return {"centered": info.centered, "decay": info.decay, "damping": info.damping,
            "kronecker_damping": info.kronecker_damping,
            "factor_refresh_period": info.factor_refresh_period,
            "float32_products": info.float32_products}


def _describe(blocks):
    def one(b):
        if b.kind == "kronecker":
            return f"{b.name}: kronecker {b.in_features}->{b.out_features}" + \
                (" +bias" if b.bias else "")
        if b.kind == "low_rank":
            return f"{b.name}: low_rank {b.dim} (max_rows {b.max_rows})"
        return f"{b.name}: {b.kind} {b.dim}"
    return "[" + ", ".join(one(b) for b in blocks) + "]"
