"""fisherd.ShardedLayeredSession against three real fisherd replicas. The oracle is one
ordinary layered session holding the whole layout on a fourth fisherd (conftest's
`server`), fed the same rows: sharding must not change a single number.

Rows and weights are float32 values (weights multiples of 1/4), sent identically to
both, so every block on its shard holds bitwise the rows its twin in the oracle holds,
cut into the same batches.

Tolerance (relative; norm-wise for vectors and matrices, see assert_close):
  SAME_RTOL 1e-12  the same float64 operations on the same data: each block's sums,
                   solve and product run the same code on the same rows in both. What
                   differs is only the order of a few sums across blocks: g^T n, n^T F n,
                   the session's W and F's trace are added per shard and then over
                   shards, where the oracle adds over its blocks in one pass (a
                   difference of a few ulps, ~1e-16 relative); eta = sqrt(2c / g^T n)
                   and the update inherit it.
"""
import os
import threading

import grpc
import numpy as np
import pytest

import fisherd
from conftest import start_fisherd, stop_fisherd
from fisherd.sharded import ShardedLayeredSession, assign_blocks, block_cost

SAME_RTOL = 1e-12
DAMPING = 0.05
DECAY = 0.9
KL = 1e-3

# A layout of every kind, Kronecker blocks of different sizes with and without bias.
LAYOUT = [
    fisherd.Block("fc1", "kronecker", in_features=6, out_features=4, bias=True),
    fisherd.Block("fc2", "kronecker", in_features=4, out_features=3),
    fisherd.Block("diag", "diagonal", dim=10),
    fisherd.Block("dense", "dense", dim=6),
    fisherd.Block("fc3", "kronecker", in_features=3, out_features=5, bias=True),
    fisherd.Block("lr", "low_rank", dim=8, max_rows=3),
    fisherd.Block("fc5", "kronecker", in_features=2, out_features=4, bias=True),
]
NAMES = [b.name for b in LAYOUT]
DIM = 4 * 7 + 3 * 4 + 10 + 6 + 5 * 4 + 8 + 4 * 3
# The assignment, worked by hand from the rule (module docstring of fisherd.sharded).
# Costs: fc1 a = 6 + 1 = 7, g = 4: 343 + 64 = 407; fc2 a = 4, g = 3: 64 + 27 = 91;
# diag 10; dense 6^3 = 216; fc3 a = 3 + 1 = 4, g = 5: 64 + 125 = 189; lr 8 * 3^2 = 72;
# fc5 a = 2 + 1 = 3, g = 4: 27 + 64 = 91, a tie with fc2, which comes first in the layout.
# Largest first, each to the least loaded shard (totals after each block):
#   fc1 -> 0 [407, 0, 0]; dense -> 1 [407, 216, 0]; fc3 -> 2 [407, 216, 189];
#   fc2 -> 2 [407, 216, 280]; fc5 -> 1 [407, 307, 280]; lr -> 2 [407, 307, 352];
#   diag -> 1 [407, 317, 352].
# (Were the tie broken the other way, fc5 would land on 2 and fc2 on 1.)
EXPECTED_SHARD = {"fc1": 0, "fc2": 2, "diag": 1, "dense": 1, "fc3": 2, "lr": 2, "fc5": 1}
# Each block's place in the global parameter vector (4 x 7, 3 x 4, 10, 6, 5 x 4, 8, 4 x 3).
EXPECTED_SLICES = {"fc1": slice(0, 28), "fc2": slice(28, 40), "diag": slice(40, 50),
                   "dense": slice(50, 56), "fc3": slice(56, 76), "lr": slice(76, 84),
                   "fc5": slice(84, 96)}
_ids = iter(range(1, 1 << 30))


def assert_close(actual, expected, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = np.linalg.norm(actual - expected)
    scale = np.linalg.norm(expected)
    assert error <= rtol * scale, f"{what}: |actual - expected| / |expected| = {error / scale:.3g}"


def same(actual, expected):
    """A scalar equal to SAME_RTOL (an exact 0 only to 0)."""
    return actual == pytest.approx(expected, rel=SAME_RTOL, abs=0)


def new_id():
    return f"shard-{os.getpid()}-{next(_ids)}"


def make_parts(rng, rows, layout=LAYOUT):
    """Rows for every block (both factors of a Kronecker block), some weighted."""
    parts = []
    for index, block in enumerate(layout):
        if block.kind == "kronecker":
            widths = [("activations", block.in_features),
                      ("output_gradients", block.out_features)]
        else:
            widths = [(None, block.dim)]
        for factor, width in widths:
            values = rng.standard_normal((rows, width)).astype(np.float32)
            if index % 2:
                weights = rng.integers(1, 9, rows).astype(np.float32) / 4
                parts.append((block.name, factor, values, weights))
            else:
                parts.append((block.name, factor, values))
    return parts


def assert_same_step(mine, theirs, what):
    assert_close(mine.natural_gradient, theirs.natural_gradient, SAME_RTOL, f"{what}: n")
    assert_close(mine.update, theirs.update, SAME_RTOL, f"{what}: update")
    for field in ("eta", "natural_norm_sq", "predicted_kl"):
        assert same(getattr(mine, field), getattr(theirs, field)), \
            (what, field, getattr(mine, field), getattr(theirs, field))
    assert mine.method == theirs.method == "layered"
    assert [s.block for s in mine.blocks] == [s.block for s in theirs.blocks] == NAMES
    assert [s.method for s in mine.blocks] == [s.method for s in theirs.blocks]
    assert mine.solver.damping == theirs.solver.damping
    assert mine.kronecker_damping == theirs.kronecker_damping == "exact"
    assert mine.solver.factorization_cached == theirs.solver.factorization_cached
    assert mine.factor_age_steps == theirs.factor_age_steps
    # The residual is measured per block and put together as one session does.
    assert mine.solver.residual == pytest.approx(theirs.solver.residual, rel=1e-9, abs=1e-300)
    assert all(shard.eta == 1.0 for shard in mine.shards)  # each shard answered n_k


def compare_steps(sharded, client, single, rng, what):
    """The combined step against the oracle's for learning-rate and KL-budget steps,
    with and without a learning-rate cap, a damping override, and the streamed float32
    transport; none of them decays (skip_decay)."""
    g = rng.standard_normal(DIM)
    uncapped = {}  # the KL-budget eta, for the caps (both sides take every step, so that
    #                their factorization caches stay alike)
    cases = [
        ("eta 1", lambda: {}),
        ("learning rate", lambda: {"learning_rate": 0.5}),
        ("KL budget", lambda: {"kl_budget": KL}),
        ("KL budget, binding cap", lambda: {"kl_budget": KL, "learning_rate": uncapped["eta"] / 2}),
        ("KL budget, loose cap", lambda: {"kl_budget": KL, "learning_rate": 2 * uncapped["eta"]}),
        ("damping override", lambda: {"kl_budget": KL, "damping": 0.2}),
        ("streamed float32", lambda: {"kl_budget": KL, "stream": True,
                                      "gradient_dtype": "float32"}),
    ]
    for name, make_options in cases:
        options = make_options()
        mine = sharded.step(g, skip_decay=True, **options)
        theirs = client.step(single, g, skip_decay=True, **options)
        assert_same_step(mine, theirs, f"{what}, {name}")
        if name == "eta 1":
            assert mine.eta == 1.0 and np.array_equal(mine.update, -mine.natural_gradient)
        if name == "learning rate":
            assert mine.eta == 0.5
        if name == "KL budget, binding cap":
            assert mine.eta == uncapped["eta"] / 2
        if name == "KL budget, loose cap":
            assert same(mine.eta, uncapped["eta"])
        if name == "KL budget":
            uncapped["eta"] = theirs.eta
            assert 0.5 * mine.eta ** 2 * mine.natural_norm_sq == pytest.approx(KL, rel=1e-12)
    assert mine.block_ranges == EXPECTED_SLICES


def compare_statistics(sharded, client, single):
    mine, theirs = sharded.get_session(), client.get_session(single)
    assert (mine.dim, mine.representation) == (theirs.dim, theirs.representation) == \
        (DIM, "layered")
    assert mine.blocks == theirs.blocks
    assert (mine.decay, mine.damping) == (theirs.decay, theirs.damping) == (DECAY, DAMPING)
    assert (mine.sample_count, mine.step_count) == (theirs.sample_count, theirs.step_count)
    assert same(mine.weight_sum, theirs.weight_sum)
    assert list(mine.block_stats) == list(theirs.block_stats) == NAMES
    for name in NAMES:
        a, b = mine.block_stats[name], theirs.block_stats[name]
        assert (a.sample_count, a.output_gradient_sample_count) == \
            (b.sample_count, b.output_gradient_sample_count), name
        assert same(a.weight_sum, b.weight_sum) and \
            same(a.output_gradient_weight_sum, b.output_gradient_weight_sum), name
    # The whole F's summary: traces and squared Frobenius norms add up over shards.
    a = sharded.get_fisher(include_matrix=False, include_eigenvalues=True).summary
    b = client.get_fisher(single, include_matrix=False, include_eigenvalues=True).summary
    assert (a.dim, a.representation, a.sample_count) == (b.dim, b.representation,
                                                         b.sample_count)
    for field in ("weight_sum", "trace", "frobenius_norm", "min_eigenvalue",
                  "max_eigenvalue"):
        assert same(getattr(a, field), getattr(b, field)), field
    # Every block's own estimate (each factor of a Kronecker block).
    for block in LAYOUT:
        factors = ["activations", "output_gradients"] if block.kind == "kronecker" else [None]
        for factor in factors:
            a = sharded.get_fisher(block=block.name, factor=factor)
            b = client.get_fisher(single, block=block.name, factor=factor)
            assert a.summary.block == block.name
            assert same(a.summary.trace, b.summary.trace)
            assert a.summary.sample_count == b.summary.sample_count
            assert_close(a.matrix, b.matrix, SAME_RTOL, f"{block.name} {factor}")


@pytest.fixture(scope="module")
def replica_clients(replicas):
    clients = [fisherd.Client(address, wait_for_ready=True, timeout=20) for address in replicas]
    yield clients
    for c in clients:
        c.close()


# --- the rule, without a server -----------------------------------------------------------
def test_assignment_rule_by_hand():
    assert [block_cost(b) for b in LAYOUT] == [407, 91, 10, 216, 189, 72, 91]
    assert assign_blocks(LAYOUT, 3) == [EXPECTED_SHARD[name] for name in NAMES]
    # Two shards, by hand: fc1 -> 0 [407, 0]; dense -> 1 [407, 216]; fc3 -> 1 [407, 405];
    # fc2 -> 1 [407, 496]; fc5 -> 0 [498, 496]; lr -> 1 [498, 568]; diag -> 0 [508, 568].
    assert assign_blocks(LAYOUT, 2) == [0, 1, 0, 1, 1, 1, 0]
    # One shard holds everything.
    assert assign_blocks(LAYOUT, 1) == [0] * len(LAYOUT)
    # Saturation: both costs exceed 2^64 - 1 (2^120 and about 2^121), so both are
    # 2^64 - 1, tie, and keep layout order: the dense block goes first, to shard 0.
    # Exact arithmetic would have put the Kronecker block there.
    huge = [fisherd.Block("d", "dense", dim=1 << 40),
            fisherd.Block("k", "kronecker", in_features=1 << 40, out_features=1 << 40)]
    assert [block_cost(b) for b in huge] == [(1 << 64) - 1] * 2
    assert assign_blocks(huge, 2) == [0, 1]
    # Equal totals go to the lowest shard index; equal costs keep layout order.
    equal = [fisherd.Block(f"b{i}", "diagonal", dim=5) for i in range(5)]
    assert assign_blocks(equal, 3) == [0, 1, 2, 0, 1]


def test_refused_before_any_call():
    # No server listens there: each refusal must come before a call.
    nowhere = [fisherd.Client("127.0.0.1:1", timeout=1) for _ in range(3)]
    try:
        # "{id}.0-of-3" has 7 characters more than the id: 56 fit in 63, 57 do not.
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession(nowhere, "x" * 57, LAYOUT)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "x" * 57 + ".0-of-3" in error.value.message
        assert "1-63 characters" in error.value.message and "at most 56" in error.value.message
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession(nowhere, "ok", LAYOUT[:2])
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "ok.2-of-3 without a block" in error.value.message
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession(nowhere, "ok", LAYOUT + [LAYOUT[0]])
        assert "'fc1' appears twice" in error.value.message
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession([], "ok", LAYOUT)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for c in nowhere:
            c.close()


def test_the_longest_id_that_fits_is_accepted(replica_clients):
    sid = "y" * 56
    sharded = ShardedLayeredSession(replica_clients, sid, LAYOUT, damping=DAMPING)
    try:
        assert [len(s) for s in sharded.shard_ids] == [63] * 3
    finally:
        sharded.delete()


# --- against the oracle ------------------------------------------------------------------
def test_sharded_session_equals_one_session(replica_clients, replicas, client):
    sid = new_id()
    sharded = ShardedLayeredSession(replica_clients, sid, LAYOUT, decay=DECAY, damping=DAMPING)
    single = client.create_session(sid, blocks=LAYOUT, decay=DECAY, damping=DAMPING)
    try:
        # Placement: the hand-worked assignment, over all three replicas.
        assert dict(zip(NAMES, sharded.assignment)) == EXPECTED_SHARD
        assert set(sharded.assignment) == {0, 1, 2}
        assert sharded.shard_ids == (f"{sid}.0-of-3", f"{sid}.1-of-3", f"{sid}.2-of-3")
        # Each shard exists on its own replica only, with its blocks in layout order.
        for j, c in enumerate(replica_clients):
            held = [s.name for s in c.list_sessions() if s.name.startswith(f"sessions/{sid}.")]
            assert held == [f"sessions/{sid}.{j}-of-3"], (replicas[j], held)
            assert [b.name for b in c.get_session(held[0]).blocks] == \
                [name for name in NAMES if EXPECTED_SHARD[name] == j]
            for k in range(3):
                if k != j:
                    with pytest.raises(fisherd.FisherdError) as error:
                        c.get_session(f"{sid}.{k}-of-3")
                    assert error.value.code == grpc.StatusCode.NOT_FOUND

        rng = np.random.default_rng(7)
        parts = make_parts(rng, 40)
        result = sharded.stream_blocks(parts, worker_id="w0")
        client.stream_blocks(single, parts, worker_id="w0")
        assert result.rows == sum(len(p[2]) for p in parts)
        assert all(r is not None for r in result.shards)
        assert [r.rows for r in result.shards] == [
            sum(len(p[2]) for p in parts if EXPECTED_SHARD[p[0]] == k) for k in range(3)]
        compare_steps(sharded, client, single, rng, "first rows")

        # A step that decays both, then rows that weigh more than the old ones.
        g = rng.standard_normal(DIM)
        assert_same_step(sharded.step(g, kl_budget=KL), client.step(single, g, kl_budget=KL),
                         "decaying step")
        parts = make_parts(rng, 24)
        sharded.stream_blocks(parts, worker_id="w0")
        client.stream_blocks(single, parts, worker_id="w0")
        compare_steps(sharded, client, single, rng, "after decay")
        compare_statistics(sharded, client, single)

        v = rng.standard_normal(DIM)
        product, quadratic = sharded.fisher_vector_product(v)
        expected, expected_quadratic = client.fisher_vector_product(single, v)
        assert_close(product, expected, SAME_RTOL, "F v")
        assert same(quadratic, expected_quadratic)
    finally:
        sharded.delete()
        client.delete_session(single)
    for j, c in enumerate(replica_clients):
        with pytest.raises(fisherd.FisherdError) as error:
            c.get_session(f"{sid}.{j}-of-3")
        assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_attach_from_a_second_object(replica_clients, replicas, client):
    """A second process's view: its own clients, the same layout and replicas."""
    sid = new_id()
    second = [fisherd.Client(address, wait_for_ready=True, timeout=20) for address in replicas]
    single = client.create_session(sid, blocks=LAYOUT, decay=DECAY, damping=DAMPING)
    sharded = None
    try:
        # The attaching side may start first: it waits for every shard to appear.
        made = {}
        creator = threading.Timer(0.3, lambda: made.setdefault("s", ShardedLayeredSession(
            replica_clients, sid, LAYOUT, decay=DECAY, damping=DAMPING)))
        creator.start()
        attached = ShardedLayeredSession.attach(second, sid, LAYOUT, timeout=20)
        creator.join()
        sharded = made["s"]
        assert attached.assignment == sharded.assignment
        assert attached.shard_ids == sharded.shard_ids

        rng = np.random.default_rng(3)
        mine, theirs = make_parts(rng, 16), make_parts(rng, 12)
        sharded.stream_blocks(mine, worker_id="w0")
        attached.stream_blocks(theirs, worker_id="w1")
        client.stream_blocks(single, mine, worker_id="w0")
        client.stream_blocks(single, theirs, worker_id="w1")
        for shard in attached.shard_sessions():
            assert set(shard.worker_sequences) == {"w0", "w1"}
        g = rng.standard_normal(DIM)
        for who, sharded_view in (("attached", attached), ("creator", sharded)):
            assert_same_step(sharded_view.step(g, kl_budget=KL, skip_decay=True),
                             client.step(single, g, kl_budget=KL, skip_decay=True), who)
        assert attached.get_session().sample_count == client.get_session(single).sample_count

        # A layout that differs in one block: refused, naming the shard holding it.
        wrong = [fisherd.Block("diag", "diagonal", dim=11) if b.name == "diag" else b
                 for b in LAYOUT]
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession.attach(second, sid, wrong)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        message = error.value.message
        assert f"shard {sid}.1-of-3 on replica {replicas[1]}" in message, message
        assert "diag: diagonal 10" in message and "diag: diagonal 11" in message, message
        # Two replicas instead of three: their shard ids do not exist.
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession.attach(second[:2], sid, LAYOUT)
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        assert f"shard {sid}.0-of-2 on replica {replicas[0]}" in error.value.message
        # The replicas in another order: shard 0 is not where it is looked for.
        with pytest.raises(fisherd.FisherdError) as error:
            ShardedLayeredSession.attach([second[1], second[0], second[2]], sid, LAYOUT)
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        assert f"shard {sid}.0-of-3 on replica {replicas[1]}" in error.value.message
    finally:
        if sharded is not None:
            sharded.delete()
        client.delete_session(single)
        for c in second:
            c.close()


def test_bad_requests_change_nothing(replica_clients):
    sid = new_id()
    sharded = ShardedLayeredSession(replica_clients, sid, LAYOUT, damping=DAMPING)
    try:
        rng = np.random.default_rng(5)
        sharded.stream_blocks(make_parts(rng, 8))
        before = sharded.get_session()
        cases = [
            (lambda: sharded.step(np.ones(DIM + 1)), f"{DIM + 1} entries"),
            (lambda: sharded.step(np.full(DIM, np.nan)), "gradient[0] is nan"),
            (lambda: sharded.step(np.ones(DIM), kl_budget=-1), "kl_budget must be"),
            (lambda: sharded.step(np.ones(DIM), learning_rate=np.inf), "learning_rate must"),
            (lambda: sharded.fisher_vector_product(np.ones(3)), "3 entries"),
            # A bad part after good ones: nothing of the call reaches any shard.
            (lambda: sharded.stream_blocks(make_parts(rng, 4) + [("nope", None, np.ones(2))]),
             "no block 'nope'"),
            (lambda: sharded.stream_blocks(make_parts(rng, 4) +
                                           [("diag", None, np.full((1, 10), np.inf))]),
             "not finite"),
            (lambda: sharded.get_fisher(), "include_matrix needs a block"),
        ]
        for call, needle in cases:
            with pytest.raises(fisherd.FisherdError) as error:
                call()
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, needle
            assert needle in error.value.message, (needle, error.value.message)
        after = sharded.get_session()
        assert (after.sample_count, after.step_count) == (before.sample_count, 0)
        # A server-side refusal names the shard: a dense block cannot hold rows of 5.
        with pytest.raises(fisherd.FisherdError) as error:
            sharded.stream_scores(np.ones((2, 5)), block="dense")
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.message.startswith(f"shard {sid}.1-of-3 on replica "
                                              f"{replica_clients[1].target}: ")
    finally:
        sharded.delete()


def test_a_dead_replica_fails_the_step_naming_its_shard():
    started = [start_fisherd() for _ in range(3)]
    clients = [fisherd.Client(address, timeout=10) for _, address in started]
    try:
        for c in clients:
            c.wait_until_ready()
        sid = new_id()
        sharded = ShardedLayeredSession(clients, sid, LAYOUT, damping=DAMPING)
        sharded.stream_blocks(make_parts(np.random.default_rng(1), 8))
        g = np.ones(DIM)
        sharded.step(g)
        process, address = started[2]
        process.kill()
        process.wait(timeout=30)
        for call in (lambda: sharded.step(g, kl_budget=KL),
                     lambda: sharded.fisher_vector_product(g)):
            with pytest.raises(fisherd.FisherdError) as error:
                call()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
            assert error.value.message.startswith(f"shard {sid}.2-of-3 on replica {address}: "), \
                error.value.message
    finally:
        for c in clients:
            c.close()
        for process, _ in started[:2]:
            stop_fisherd(process)
        if started[2][0].poll() is None:
            started[2][0].kill()
