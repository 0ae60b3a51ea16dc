"""Layered sessions (a block-diagonal F of DENSE, DIAGONAL, KRONECKER and LOW_RANK blocks)
and steps of any size (StreamNaturalGradientStep) through fisherd.Client against the
real fisherd, every number checked against an independent NumPy float64 oracle.

Scores and weights are generated as float32 values, so the float32 the client sends is
exactly what the oracle uses; the oracles form F from those values in float64.

Tolerances (relative, norm-wise over a vector or matrix, see assert_close):
  ESTIMATE_RTOL 1e-12  an estimate (F, a factor, F v) is a float64 sum of products of
                       float32 values; server and NumPy differ only in summation order
                       (~rows * 1e-16).
  SOLVE_RTOL    1e-10  a step solves a system of condition number < 1e3 (damping 0.05-0.1
                       against factors of norm ~1): float64 Cholesky, Woodbury and
                       eigendecompositions (dsyevd, backward error O(eps |A|)) all land
                       within cond * 1e-16 ~ 1e-13 of the exact solution; 1e-10 leaves
                       three digits for the differing algorithms.
  SAME_RTOL     1e-13  the same step computed twice on the server (unary and streamed,
                       float64 and float32 transport of float32 values): the same
                       arithmetic, so only a threaded reduction's order may differ.
"""
import time

import grpc
import numpy as np
import pytest

import fisherd
from fisherd.v1 import fisher_pb2 as pb
from fisherd.v1 import fisher_pb2_grpc

ESTIMATE_RTOL = 1e-12
SOLVE_RTOL = 1e-10
SAME_RTOL = 1e-13


def assert_close(actual, expected, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = np.linalg.norm(actual - expected)
    scale = np.linalg.norm(expected)
    assert error <= rtol * scale, f"{what}: |actual - expected| / |expected| = {error / scale:.3g}"


# --- oracles ------------------------------------------------------------------------
def f32_rows(rng, rows, width, scale=1.0):
    return (scale * rng.standard_normal((rows, width))).astype(np.float32)


def f32_weights(rng, rows):
    """Weights in {0.25, 0.5, ..., 2}: exact in float32."""
    return rng.integers(1, 9, rows).astype(np.float32) / 4


def second_moment(rows, weights=None):
    r = np.asarray(rows, dtype=np.float64)
    w = np.ones(len(r)) if weights is None else np.asarray(weights, dtype=np.float64)
    return (r * w[:, None]).T @ r / w.sum()


def with_ones(rows):
    return np.hstack([np.asarray(rows, dtype=np.float64), np.ones((len(rows), 1))])


def kron_order(in_features, out_features, bias):
    """perm with p[perm] = vec(V) row-major, V = [W | b] (out x (in + bias)), for the
    parameter order p = (W row-major, then b)."""
    cols = in_features + int(bias)
    perm = np.empty(out_features * cols, dtype=np.int64)
    for i in range(out_features):
        perm[i * cols:i * cols + in_features] = i * in_features + np.arange(in_features)
        if bias:
            perm[i * cols + in_features] = out_features * in_features + i
    return perm


def kron_fisher(G, A, in_features, out_features, bias):
    """G (x) A in the parameter order (weights row-major, then biases)."""
    perm = kron_order(in_features, out_features, bias)
    F = np.empty((len(perm), len(perm)))
    F[np.ix_(perm, perm)] = np.kron(G, A)
    return F


def factored_solve(G, A, g, lam, in_features, out_features, bias):
    """(G + sqrt(lam)/pi I)^-1 V (A + pi sqrt(lam) I)^-1, pi = sqrt((tr A / n_A) / (tr G / n_G))."""
    perm = kron_order(in_features, out_features, bias)
    V = g[perm].reshape(out_features, in_features + int(bias))
    pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
    N = np.linalg.solve(G + np.sqrt(lam) / pi * np.eye(G.shape[0]), V)
    N = np.linalg.solve(A + pi * np.sqrt(lam) * np.eye(A.shape[0]), N.T).T  # A symmetric
    n = np.empty_like(g)
    n[perm] = N.reshape(-1)
    return n


def block_diag(*blocks):
    dim = sum(b.shape[0] for b in blocks)
    F = np.zeros((dim, dim))
    start = 0
    for b in blocks:
        F[start:start + b.shape[0], start:start + b.shape[0]] = b
        start += b.shape[0]
    return F


# --- a session mixing the four kinds -------------------------------------------------------
MIXED = [
    fisherd.Block("dense.0", "dense", dim=5),
    {"name": "diag.1", "kind": "diagonal", "dim": 7},
    fisherd.Block("fc.2", "kronecker", in_features=3, out_features=2, bias=True),
    {"name": "lowrank.3", "kind": "low_rank", "dim": 9, "max_rows": 4},
]
MIXED_DIM = 5 + 7 + 2 * (3 + 1) + 9
MIXED_DAMPING = 0.05


def make_mixed(client, new_session, seed=11, **config):
    """A layered session with every kind, fed in several batches; returns (name, F blocks
    in layout order, rows fed)."""
    rng = np.random.default_rng(seed)
    name = new_session(None, blocks=MIXED, damping=MIXED_DAMPING, **config)
    dense, dense_w = f32_rows(rng, 12, 5), f32_weights(rng, 12)
    diag = f32_rows(rng, 10, 7)
    acts, acts_w = f32_rows(rng, 6, 3), f32_weights(rng, 6)
    grads = f32_rows(rng, 5, 2)
    low, low_w = f32_rows(rng, 6, 9), f32_weights(rng, 6)
    client.stream_scores(name, dense, weights=dense_w, block="dense.0", rows_per_batch=5)
    client.stream_scores(name, diag, block="diag.1", rows_per_batch=4)
    client.stream_scores(name, acts, weights=acts_w, block="fc.2", factor="activations")
    client.stream_scores(name, grads, block="fc.2", factor="output_gradients", rows_per_batch=2)
    # The window keeps the latest 4 of the 6 rows, across batches.
    client.stream_scores(name, low[:3], weights=low_w[:3], block="lowrank.3")
    client.stream_scores(name, low[3:], weights=low_w[3:], block="lowrank.3")
    A, G = second_moment(with_ones(acts), acts_w), second_moment(grads)
    blocks = [second_moment(dense, dense_w),
              np.diag(second_moment(diag).diagonal()),
              kron_fisher(G, A, 3, 2, True),
              second_moment(low[2:], low_w[2:])]
    fed = {"dense": (dense, dense_w), "diag": diag, "acts": (acts, acts_w), "grads": grads,
           "low": (low, low_w), "A": A, "G": G}
    return name, blocks, fed


# --- tests ------------------------------------------------------------------------------------
@pytest.fixture
def new_session(client, new_session):
    """conftest's new_session (dim may be None with blocks), each session deleted after
    the test: the shared server holds at most 64."""
    names = []

    def make(dim=None, **config):
        names.append(new_session(dim, **config))
        return names[-1]
    yield make
    for name in names:
        try:
            client.delete_session(name)
        except fisherd.FisherdError:
            pass


@pytest.mark.parametrize("damping_mode", ["exact", "factored"])
def test_kronecker_block_matches_dense_kron_solve(client, new_session, damping_mode):
    in_f, out_f, lam = 6, 4, 0.1
    rng = np.random.default_rng(3)
    name = new_session(None, blocks=[fisherd.Block("fc", "kronecker", in_features=in_f,
                                                   out_features=out_f, bias=True)],
                       damping=lam, kronecker_damping=damping_mode)
    acts, acts_w = f32_rows(rng, 20, in_f), f32_weights(rng, 20)
    grads = f32_rows(rng, 15, out_f, scale=0.7)
    client.stream_scores(name, acts, weights=acts_w, block="fc", factor="activations",
                         worker_id="w", rows_per_batch=7)
    client.stream_scores(name, grads, block="fc", factor="output_gradients", worker_id="w",
                         rows_per_batch=7)
    A, G = second_moment(with_ones(acts), acts_w), second_moment(grads)
    F = kron_fisher(G, A, in_f, out_f, True)
    dim = out_f * (in_f + 1)

    session = client.get_session(name)
    assert (session.dim, session.representation, session.kronecker_damping) == (
        dim, "layered", damping_mode)
    assert session.block_stats["fc"] == fisherd.BlockStats(
        "fc", 20, float(acts_w.sum()), 15, 15.0)
    assert session.sample_count == 35
    assert session.weight_sum == pytest.approx(acts_w.sum() + 15, rel=1e-15)
    assert session.worker_sequences == {"w": 6}  # 3 + 3 batches, one sequence space

    for factor, expected in [("activations", A), ("output_gradients", G)]:
        fisher = client.get_fisher(name, block="fc", factor=factor, include_eigenvalues=True)
        assert_close(fisher.matrix, expected, ESTIMATE_RTOL, factor)
        s = fisher.summary
        assert (s.block, s.factor, s.block_kind, s.dim) == (
            "fc", fisherd.client._FACTORS[factor], pb.BLOCK_KIND_KRONECKER, len(expected))
        assert s.sample_count == (20 if factor == "activations" else 15)
        assert s.trace == pytest.approx(np.trace(expected), rel=ESTIMATE_RTOL)
        assert s.min_eigenvalue == pytest.approx(np.linalg.eigvalsh(expected)[0], rel=1e-9)
    whole = client.get_fisher(name, include_matrix=False, block="fc", include_eigenvalues=True)
    assert whole.matrix is None
    assert (whole.summary.dim, whole.summary.block_kind) == (dim, pb.BLOCK_KIND_KRONECKER)
    assert whole.summary.trace == pytest.approx(np.trace(F), rel=ESTIMATE_RTOL)
    assert whole.summary.frobenius_norm == pytest.approx(np.linalg.norm(F), rel=ESTIMATE_RTOL)
    eigenvalues = np.linalg.eigvalsh(F)
    assert whole.summary.max_eigenvalue == pytest.approx(eigenvalues[-1], rel=1e-9)
    assert whole.summary.min_eigenvalue == pytest.approx(eigenvalues[0], rel=1e-9)

    v = rng.standard_normal(dim)
    product, kl = client.fisher_vector_product(name, v)
    assert_close(product, F @ v, ESTIMATE_RTOL, "F v")
    assert kl == pytest.approx(0.5 * v @ F @ v, rel=ESTIMATE_RTOL)

    g = rng.standard_normal(dim)
    step = client.step(name, g, skip_decay=True)
    if damping_mode == "exact":
        expected = np.linalg.solve(F + lam * np.eye(dim), g)
    else:
        expected = factored_solve(G, A, g, lam, in_f, out_f, True)
    assert_close(step.natural_gradient, expected, SOLVE_RTOL, "natural gradient")
    assert_close(step.update, -expected, SOLVE_RTOL, "update")
    assert step.eta == 1.0
    assert step.natural_norm_sq == pytest.approx(g @ expected, rel=SOLVE_RTOL)
    assert step.predicted_kl == pytest.approx(0.5 * expected @ F @ expected, rel=SOLVE_RTOL)
    assert (step.method, step.kronecker_damping, step.factor_age_steps) == (
        "layered", damping_mode, 0)
    (summary,) = step.blocks
    assert (summary.block, summary.method, summary.kronecker_damping, summary.damping) == (
        "fc", "kronecker", damping_mode, lam)
    assert step.block_summary("fc") == summary
    if damping_mode == "exact":
        assert summary.residual < 1e-12

    # Streamed in chunks that do not align with anything: the same answer.
    streamed = client.step(name, g, skip_decay=True, stream=True, chunk_values=5)
    assert_close(streamed.natural_gradient, step.natural_gradient, SAME_RTOL, "streamed")
    assert streamed.block_ranges == {"fc": slice(0, dim)}
    assert client.get_session(name).step_count == 2


def test_layered_session_mixing_all_kinds(client, new_session):
    name, blocks, fed = make_mixed(client, new_session)
    F = block_diag(*blocks)
    session = client.get_session(name)
    assert (session.dim, session.representation, session.layered) == (MIXED_DIM, "layered", True)
    sent = [fisherd.Block.of(b) for b in MIXED]
    assert [(b.name, b.kind, b.in_features, b.out_features, b.bias, b.max_rows)
            for b in session.blocks] == [
        (b.name, b.kind, b.in_features, b.out_features, b.bias, b.max_rows) for b in sent]
    assert [b.parameter_count for b in session.blocks] == [5, 7, 8, 9]
    slices = session.block_slices()
    assert list(slices) == ["dense.0", "diag.1", "fc.2", "lowrank.3"]
    assert slices["lowrank.3"] == slice(20, 29)
    stats = session.block_stats
    assert list(stats) == list(slices)
    assert (stats["dense.0"].sample_count, stats["diag.1"].sample_count,
            stats["fc.2"].sample_count, stats["fc.2"].output_gradient_sample_count,
            stats["lowrank.3"].sample_count) == (12, 10, 6, 5, 6)
    assert stats["dense.0"].weight_sum == float(fed["dense"][1].sum())
    assert stats["diag.1"].weight_sum == 10.0
    assert stats["fc.2"].weight_sum == float(fed["acts"][1].sum())
    assert stats["fc.2"].output_gradient_weight_sum == 5.0
    assert session.sample_count == 12 + 10 + 6 + 5 + 6

    # Each block's estimate, and the whole block-diagonal F's summary.
    for block, expected in [("dense.0", blocks[0]), ("lowrank.3", blocks[3])]:
        assert_close(client.get_fisher(name, block=block).matrix, expected, ESTIMATE_RTOL, block)
    assert_close(client.get_fisher(name, block="diag.1").matrix, blocks[1].diagonal(),
                 ESTIMATE_RTOL, "diag.1")
    assert_close(client.get_fisher(name, block="fc.2", factor="activations").matrix, fed["A"],
                 ESTIMATE_RTOL, "A")
    assert_close(client.get_fisher(name, block="fc.2", factor="output_gradients").matrix,
                 fed["G"], ESTIMATE_RTOL, "G")
    whole = client.get_fisher(name, include_matrix=False, include_eigenvalues=True).summary
    assert (whole.dim, whole.representation, whole.block) == (
        MIXED_DIM, pb.REPRESENTATION_LAYERED, "")
    assert whole.sample_count == session.sample_count
    assert whole.trace == pytest.approx(np.trace(F), rel=ESTIMATE_RTOL)
    assert whole.frobenius_norm == pytest.approx(np.linalg.norm(F), rel=ESTIMATE_RTOL)
    assert whole.max_eigenvalue == pytest.approx(np.linalg.eigvalsh(F)[-1], rel=1e-9)

    rng = np.random.default_rng(12)
    v = rng.standard_normal(MIXED_DIM)
    product, kl = client.fisher_vector_product(name, v)
    assert_close(product, F @ v, ESTIMATE_RTOL, "F v")
    assert kl == pytest.approx(0.5 * v @ F @ v, rel=ESTIMATE_RTOL)

    g = rng.standard_normal(MIXED_DIM)
    damped = F + MIXED_DAMPING * np.eye(MIXED_DIM)
    expected = np.linalg.solve(damped, g)
    step = client.step(name, g, skip_decay=True)
    assert_close(step.natural_gradient, expected, SOLVE_RTOL, "natural gradient")
    assert step.predicted_kl == pytest.approx(0.5 * expected @ F @ expected, rel=SOLVE_RTOL)
    assert step.method == "layered" and step.kronecker_damping == "exact"
    assert [(s.block, s.method) for s in step.blocks] == [
        ("dense.0", "cholesky"), ("diag.1", "diagonal"), ("fc.2", "kronecker"),
        ("lowrank.3", "woodbury")]
    assert all(s.damping == MIXED_DAMPING for s in step.blocks)
    assert step.block_summary("diag.1").kronecker_damping == ""

    # KL budget: eta = sqrt(2c / g^T n); predicted_kl = 1/2 u^T F u with the undamped F.
    budget, lam = 1e-3, 0.2
    expected = np.linalg.solve(F + lam * np.eye(MIXED_DIM), g)
    step = client.step(name, g, kl_budget=budget, damping=lam, skip_decay=True)
    assert_close(step.natural_gradient, expected, SOLVE_RTOL, "natural gradient, lambda 0.2")
    eta = np.sqrt(2 * budget / (g @ expected))
    assert step.eta == pytest.approx(eta, rel=SOLVE_RTOL)
    assert_close(step.update, -eta * expected, SOLVE_RTOL, "update")
    u = step.update
    assert step.predicted_kl == pytest.approx(0.5 * u @ F @ u, rel=SOLVE_RTOL)
    assert step.solver.damping == lam
    assert client.get_session(name).step_count == 2


def test_streamed_step_equals_unary(client, new_session):
    name, blocks, _ = make_mixed(client, new_session, seed=21)
    g = np.random.default_rng(22).standard_normal(MIXED_DIM)
    unary = client.step(name, g, skip_decay=True, kl_budget=0.01)
    assert unary.block_ranges is None
    session = client.get_session(name)
    for chunk in [1, 4, 7, MIXED_DIM, None]:
        streamed = client.step(name, g, skip_decay=True, kl_budget=0.01, stream=True,
                               chunk_values=chunk)
        assert_close(streamed.natural_gradient, unary.natural_gradient, SAME_RTOL, f"{chunk}")
        assert_close(streamed.update, unary.update, SAME_RTOL, f"update, chunks of {chunk}")
        assert streamed.eta == pytest.approx(unary.eta, rel=SAME_RTOL)
        assert streamed.predicted_kl == pytest.approx(unary.predicted_kl, rel=SAME_RTOL)
        assert streamed.natural_norm_sq == pytest.approx(unary.natural_norm_sq, rel=SAME_RTOL)
        assert [s.block for s in streamed.blocks] == [s.block for s in unary.blocks]
        assert streamed.block_ranges == session.block_slices()
    # float32 transport equals float64 transport of the float32-rounded gradient.
    g32 = g.astype(np.float32).astype(np.float64)
    reference = client.step(name, g32, skip_decay=True)
    for stream in [True, False]:
        rounded = client.step(name, g, skip_decay=True, stream=stream, gradient_dtype="float32",
                              chunk_values=6)
        assert_close(rounded.natural_gradient, reference.natural_gradient, SAME_RTOL, "float32")
    # A plain dense session streams too (no block names in its chunks).
    rows = f32_rows(np.random.default_rng(23), 40, 30)
    dense = new_session(30, damping=0.1)
    client.stream_scores(dense, rows)
    g = np.random.default_rng(24).standard_normal(30)
    streamed = client.step(dense, g, stream=True, chunk_values=8, skip_decay=True)
    assert streamed.block_ranges is None
    assert_close(streamed.natural_gradient,
                 np.linalg.solve(second_moment(rows) + 0.1 * np.eye(30), g), SOLVE_RTOL, "dense")
    assert client.get_session(dense).step_count == 1


def test_answer_forms_carry_the_same_update(client, new_session):
    """answer="update" is the full answer's update to the bit without n; "update_f32" is
    each value rounded to float32 by the server; unary and streamed (chunks crossing
    blocks), with the same scalars. An unknown form is refused before any call."""
    name, _, _ = make_mixed(client, new_session, seed=25)
    g = np.random.default_rng(26).standard_normal(MIXED_DIM)
    full = client.step(name, g, skip_decay=True, kl_budget=0.01)
    for stream in [False, True]:
        alone = client.step(name, g, skip_decay=True, kl_budget=0.01, stream=stream,
                            chunk_values=4, answer="update")
        assert alone.natural_gradient is None and alone.update.dtype == np.float64
        np.testing.assert_array_equal(alone.update, full.update)
        rounded = client.step(name, g, skip_decay=True, kl_budget=0.01, stream=stream,
                              chunk_values=4, answer="update_f32")
        assert rounded.natural_gradient is None and rounded.update.dtype == np.float32
        np.testing.assert_array_equal(rounded.update, full.update.astype(np.float32))
        for result in (alone, rounded):
            assert (result.eta, result.predicted_kl) == (full.eta, full.predicted_kl)
    with pytest.raises(fisherd.FisherdError, match="answer must be one of"):
        client.step(name, g, answer="n")


def test_sequences_span_blocks(server, client, new_session):
    name = new_session(None, blocks=MIXED)
    assert client.stream_scores(name, np.ones((4, 5)), block="dense.0", worker_id="w",
                                rows_per_batch=2).sequence == 2
    assert client.stream_scores(name, np.ones((1, 7)), block="diag.1",
                                worker_id="w").sequence == 3
    assert client.stream_scores(name, np.ones((3, 3)), block="fc.2", factor="activations",
                                worker_id="w", rows_per_batch=1).sequence == 6
    with fisherd.Client(server) as other:  # resumes from GetSession's worker_sequences
        ack = other.stream_scores(name, np.ones((1, 9)), block="lowrank.3", worker_id="w")
    assert (ack.sequence, ack.duplicate, ack.sample_count) == (7, False, 9)
    assert client.get_session(name).worker_sequences == {"w": 7}


BAD_SCORES = [  # (block, factor, width, needle)
    ("nope", None, 5, "nope"),
    ("dense.0", "activations", 5, "dense.0"),         # a factor on a non-Kronecker block
    ("lowrank.3", "output_gradients", 9, "lowrank.3"),
    ("fc.2", None, 3, "fc.2"),                         # a Kronecker block without factor
    ("diag.1", None, 8, "diag.1"),                     # wrong width
    ("fc.2", "activations", 4, "fc.2"),                # the bias' 1 is not sent
    ("fc.2", "output_gradients", 3, "fc.2"),
    (None, None, MIXED_DIM, "block"),                  # a layered session needs a block
]


@pytest.mark.parametrize("block, factor, width, needle", BAD_SCORES,
                         ids=[f"{b}-{f}-{w}" for b, f, w, _ in BAD_SCORES])
def test_bad_scores_name_the_block_and_change_nothing(client, new_session, block, factor,
                                                      width, needle):
    name, _, _ = make_mixed(client, new_session, seed=31)
    before = client.get_session(name)
    with pytest.raises(fisherd.FisherdError) as error:
        client.stream_scores(name, np.ones((3, width)), block=block, factor=factor,
                             worker_id="bad")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert needle in error.value.message, error.value.message
    assert client.get_session(name) == before
    # The session goes on working: the same worker streams right after.
    ack = client.stream_scores(name, np.ones((1, 7)), block="diag.1", worker_id="bad")
    assert (ack.sequence, ack.sample_count) == (1, before.sample_count + 1)


def test_bad_requests_on_layered_sessions(client, new_session):
    name, _, _ = make_mixed(client, new_session, seed=41)
    before = client.get_session(name)

    def invalid(call, *needles):
        with pytest.raises(fisherd.FisherdError) as error:
            call()
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, error.value
        for needle in needles:
            assert needle in error.value.message, error.value.message

    invalid(lambda: client.get_fisher(name, block="nope"), "nope")
    invalid(lambda: client.get_fisher(name, block="dense.0", factor="activations"), "dense.0")
    invalid(lambda: client.get_fisher(name, block="fc.2"), "fc.2")  # which factor?
    invalid(lambda: client.get_fisher(name))  # the whole F's matrix is never formed
    g = np.ones(MIXED_DIM + 1)
    invalid(lambda: client.step(name, g))
    invalid(lambda: client.step(name, g, stream=True, chunk_values=4))
    invalid(lambda: client.step(name, g[:-2], stream=True))
    invalid(lambda: client.fisher_vector_product(name, g))
    assert client.get_session(name) == before

    def create(blocks, dim=None, **config):
        new_session(dim, blocks=blocks, **config)

    kron = {"name": "fc", "kind": "kronecker", "in_features": 3, "out_features": 2}
    invalid(lambda: create([{"name": "a", "kind": "dense", "dim": 2},
                            {"name": "a", "kind": "diagonal", "dim": 2}]), "a")
    invalid(lambda: create([{"name": "zero", "kind": "diagonal", "dim": 0}]), "zero")
    invalid(lambda: create([{"name": "lr", "kind": "low_rank", "dim": 4}]), "lr")  # max_rows
    invalid(lambda: create([{**kron, "in_features": 0}]), "fc")
    invalid(lambda: create([kron], centered=True), "fc")
    invalid(lambda: create([kron], dim=7))  # the blocks hold 6 parameters
    invalid(lambda: create([{"name": "bad name!", "kind": "dense", "dim": 2}]))
    create([kron], dim=6)  # the right total is accepted


def test_client_side_checks(client):
    def invalid(call, needle):
        with pytest.raises(fisherd.FisherdError) as error:
            call()
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in error.value.message, error.value.message

    dense = {"name": "d", "kind": "dense", "dim": 2}
    invalid(lambda: client.create_session("x", blocks=[{"name": "k", "kind": "conv"}]), "conv")
    invalid(lambda: client.create_session("x", blocks=[{**dense, "rows": 3}]), "rows")
    invalid(lambda: client.create_session("x", blocks=[dense], representation="diagonal"),
            "layered")
    invalid(lambda: client.create_session("x", blocks=[{**dense, "dim": -1}]), "dim")
    invalid(lambda: client.create_session("x", blocks=[dense], kronecker_damping="tikhonov"),
            "tikhonov")
    invalid(lambda: client.create_session("x"), "dim")
    invalid(lambda: client.create_session("x", blocks=[dense], float32_products="yes"),
            "float32_products")
    invalid(lambda: client.stream_scores("x", np.ones((1, 2)), block="d", factor="weights"),
            "weights")
    invalid(lambda: client.step("x", [1.0], gradient_dtype="int8"), "int8")
    invalid(lambda: client.step("x", [1e39], gradient_dtype="float32"), "gradient[0]")
    invalid(lambda: client.step("x", [1.0], stream=True, chunk_values=0), "chunk_values")
    with pytest.raises(fisherd.FisherdError) as error:
        client.get_session("x")  # nothing was created
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_factor_refresh_period(client, new_session):
    """Period 3: the eigendecompositions of step 1 serve steps 2 and 3 (ages 1 and 2, the
    step then solves with the factors as they were at step 1); step 4 recomputes."""
    in_f, out_f, lam = 4, 3, 0.1
    rng = np.random.default_rng(51)
    name = new_session(None, blocks=[{"name": "fc", "kind": "kronecker",
                                      "in_features": in_f, "out_features": out_f}],
                       damping=lam, factor_refresh_period=3)
    assert client.get_session(name).factor_refresh_period == 3
    acts, grads = [f32_rows(rng, 10, in_f)], [f32_rows(rng, 8, out_f)]

    def feed():
        client.stream_scores(name, acts[-1], block="fc", factor="activations")
        client.stream_scores(name, grads[-1], block="fc", factor="output_gradients")

    def solve():
        F = kron_fisher(second_moment(np.vstack(grads)), second_moment(np.vstack(acts)),
                        in_f, out_f, False)
        return np.linalg.solve(F + lam * np.eye(len(F)), g)

    g = rng.standard_normal(in_f * out_f)
    feed()
    first = solve()
    step = client.step(name, g, skip_decay=True)
    assert_close(step.natural_gradient, first, SOLVE_RTOL, "step 1")
    assert step.factor_age_steps == 0
    acts.append(f32_rows(rng, 10, in_f, scale=2.0))
    grads.append(f32_rows(rng, 8, out_f, scale=0.5))
    feed()
    for age in [1, 2]:
        step = client.step(name, g, skip_decay=True)
        assert (step.factor_age_steps, step.block_summary("fc").factor_age_steps) == (age, age)
        assert_close(step.natural_gradient, first, SOLVE_RTOL, f"step {age + 1}")
    step = client.step(name, g, skip_decay=True)
    assert step.factor_age_steps == 0
    assert_close(step.natural_gradient, solve(), SOLVE_RTOL, "step 4")


def test_streamed_answer_messages_stay_small(client, new_session):
    """The raw StreamNaturalGradientStep answer: a header first, then consecutive chunks of
    at most about 1 MiB, each inside one block and naming it."""
    sizes = [150_000, 3, 100_000]
    name = new_session(None, blocks=[{"name": f"b{i}", "kind": "diagonal", "dim": d}
                                     for i, d in enumerate(sizes)], damping=1.0)
    for i, d in enumerate(sizes):
        client.stream_scores(name, np.ones((1, d)), block=f"b{i}")
    dim = sum(sizes)
    g = np.arange(dim, dtype=np.float64)

    def requests():
        yield pb.StreamNaturalGradientStepRequest(
            header=pb.NaturalGradientStepRequest(session=name, skip_decay=True),
            gradient=g[:100_000])
        yield pb.StreamNaturalGradientStepRequest(offset=100_000, gradient_f32=(
            g[100_000:].astype("<f4").tobytes()))

    stub = fisher_pb2_grpc.FisherServiceStub(client.channel)
    answers = list(stub.StreamNaturalGradientStep(requests(), timeout=30))
    assert answers[0].HasField("header") and not answers[0].header.natural_gradient
    assert answers[0].header.solver.method == "layered"
    offset, starts = 0, np.cumsum([0] + sizes)
    for answer in answers[1:]:
        assert not answer.HasField("header")
        assert answer.offset == offset
        size = len(answer.natural_gradient)
        assert 0 < size == len(answer.update)
        assert answer.ByteSize() <= (1 << 20) + 1024
        index = int(np.searchsorted(starts, offset, side="right")) - 1
        assert answer.block == f"b{index}"
        assert offset + size <= starts[index + 1]  # inside one block
        expected = g[offset:offset + size].astype(np.float32) / 2  # F = 1, lambda = 1
        np.testing.assert_array_equal(answer.natural_gradient, expected)
        offset += size
    assert offset == dim


BAD_STREAMS = {  # name -> the request messages (without the session name)
    "no header": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 6)],
    "gap": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 3),
            pb.StreamNaturalGradientStepRequest(offset=4, gradient=[1.0] * 3)],
    "overlap": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 3),
                pb.StreamNaturalGradientStepRequest(offset=2, gradient=[1.0] * 4)],
    "short": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 5)],
    "long": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 7)],
    "both encodings": [pb.StreamNaturalGradientStepRequest(
        gradient=[1.0] * 3, gradient_f32=np.ones(3, "<f4").tobytes())],
    "ragged float32": [pb.StreamNaturalGradientStepRequest(gradient_f32=b"\0" * 23)],
    "second header": [pb.StreamNaturalGradientStepRequest(gradient=[1.0] * 3),
                      pb.StreamNaturalGradientStepRequest(offset=3, gradient=[1.0] * 3)],
    "unknown answer": [pb.StreamNaturalGradientStepRequest(
        header=pb.NaturalGradientStepRequest(answer=7), gradient=[1.0] * 6)],
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_bad_step_streams_are_refused(client, new_session, case):
    name = new_session(6, damping=1.0)
    client.stream_scores(name, np.eye(6))
    messages = [pb.StreamNaturalGradientStepRequest.FromString(m.SerializeToString())
                for m in BAD_STREAMS[case]]
    if case != "no header":
        messages[0].header.session = name
    if case == "second header":
        messages[1].header.session = name
    stub = fisher_pb2_grpc.FisherServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamNaturalGradientStep(iter(messages), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    session = client.get_session(name)
    assert (session.step_count, session.sample_count) == (0, 6)


# --- the client's reassembly against a scripted server ------------------------------------------
class ScriptedStepServer(fisher_pb2_grpc.FisherServiceServicer):
    """Answers StreamNaturalGradientStep with n = 2 g, update = -g, in the chunks the
    session's name scripts (a bad script checks that the client notices)."""

    def __init__(self):
        self.requests = []

    def StreamNaturalGradientStep(self, request_iterator, context):
        requests = list(request_iterator)
        self.requests.append(requests)
        header = requests[0].header
        g = np.concatenate([np.array(r.gradient) if r.gradient else
                            np.frombuffer(r.gradient_f32, "<f4").astype(np.float64)
                            for r in requests])
        script = header.session.split("/", 1)[1]
        g = np.concatenate([g, np.zeros(5)])  # room for a chunk past the end
        answer = pb.NaturalGradientStepResponse(eta=1.0, natural_norm_sq=2 * g @ g)
        answer.solver.method = "layered"
        if script != "no-header":
            yield pb.StreamNaturalGradientStepResponse(header=answer)
        chunks = {"ok": [("a", 0, 3), ("a", 3, 5), ("b", 5, 9)],
                  "no-header": [("a", 0, 9)],
                  "gap": [("a", 0, 3), ("a", 4, 9)],
                  "short": [("a", 0, 7)],
                  "past-end": [("a", 0, 5), ("a", 5, 11)],
                  "split-block": [("a", 0, 3), ("b", 3, 5), ("a", 5, 9)],
                  "mismatch": [("a", 0, 9, 8)]}[script]
        for block, start, end, *update_end in chunks:
            update_end = update_end[0] if update_end else end
            yield pb.StreamNaturalGradientStepResponse(
                block=block, offset=start, natural_gradient=2 * g[start:end],
                update=-g[start:update_end])


@pytest.fixture
def scripted():
    from concurrent import futures
    servicer = ScriptedStepServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fisher_pb2_grpc.add_FisherServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with fisherd.Client(f"127.0.0.1:{port}") as c:
            yield c, servicer
    finally:
        server.stop(None)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_client_chunks_and_reassembles(scripted, dtype):
    c, servicer = scripted
    g = np.arange(9, dtype=np.float64) - 4
    step = c.step("ok", g, stream=True, chunk_values=4, gradient_dtype=dtype, kl_budget=0.5)
    np.testing.assert_array_equal(step.natural_gradient, 2 * g)
    np.testing.assert_array_equal(step.update, -g)
    assert step.block_ranges == {"a": slice(0, 5), "b": slice(5, 9)}
    assert step.natural_norm_sq == 2 * g @ g and step.method == "layered"
    (requests,) = servicer.requests
    assert requests[0].header.session == "sessions/ok"
    assert requests[0].header.kl_budget == 0.5
    assert not requests[0].header.gradient
    assert [r.HasField("header") for r in requests] == [True, False, False]
    assert [r.offset for r in requests] == [0, 4, 8]
    field = "gradient" if dtype == "float64" else "gradient_f32"
    for r in requests:
        assert bool(r.gradient) == (field == "gradient")
        assert bool(r.gradient_f32) == (field == "gradient_f32")


@pytest.mark.parametrize("script, needle", [
    ("no-header", "no header"), ("gap", "consecutive"), ("short", "cover 7 of"),
    ("past-end", "exceeds"), ("split-block", "block a"), ("mismatch", "update values")])
def test_client_checks_the_streamed_answer(scripted, script, needle):
    c, _ = scripted
    with pytest.raises(fisherd.FisherdError) as error:
        c.step(script, np.ones(9), stream=True)
    assert error.value.code == grpc.StatusCode.INTERNAL
    assert needle in error.value.message, error.value.message


# --- 3e7 parameters under gRPC's default 4 MiB message limit --------------------------------------
def test_thirty_million_parameters_under_default_limits():
    """60 DIAGONAL blocks of 5e5 parameters (a score row of 2 MB fits a 4 MiB message), two
    Kronecker blocks, a dense and a low-rank one: scores streamed row by row, the step
    streamed both ways with server and client limited to 4 MiB messages."""
    from conftest import start_fisherd, stop_fisherd
    diag, count, lam = 500_000, 60, 0.25
    blocks = [fisherd.Block(f"layer{i}.weight", "diagonal", dim=diag) for i in range(count)]
    blocks += [fisherd.Block("fc", "kronecker", in_features=64, out_features=32, bias=True),
               fisherd.Block("conv", "kronecker", in_features=27, out_features=16),
               fisherd.Block("head", "dense", dim=50),
               fisherd.Block("emb", "low_rank", dim=1000, max_rows=8)]
    dim = sum(b.parameter_count for b in blocks)
    assert dim >= 30_000_000
    rng = np.random.default_rng(61)
    process, address = start_fisherd("--max-message-mb=4")
    timings = {}
    try:
        with fisherd.Client(address, wait_for_ready=True, max_message_bytes=4 << 20) as c:
            name = c.create_session("large", blocks=blocks, damping=lam)
            start = time.monotonic()
            diagonal = np.empty(count * diag)
            weights = np.array([0.5, 1.5], dtype=np.float32)
            for i in range(count):
                rows = rng.standard_normal((2, diag), dtype=np.float32)
                c.stream_scores(name, rows, weights=weights, block=f"layer{i}.weight")
                r = rows.astype(np.float64)
                diagonal[i * diag:(i + 1) * diag] = (0.5 * r[0] ** 2 + 1.5 * r[1] ** 2) / 2
            small = {}
            for block, in_f, out_f, bias in [("fc", 64, 32, True), ("conv", 27, 16, False)]:
                acts, grads = f32_rows(rng, 100, in_f), f32_rows(rng, 80, out_f)
                c.stream_scores(name, acts, block=block, factor="activations")
                c.stream_scores(name, grads, block=block, factor="output_gradients")
                a = with_ones(acts) if bias else acts
                small[block] = kron_fisher(second_moment(grads), second_moment(a), in_f, out_f,
                                           bias)
            head, emb = f32_rows(rng, 80, 50), f32_rows(rng, 20, 1000)
            c.stream_scores(name, head, block="head")
            c.stream_scores(name, emb, block="emb")
            small["head"], small["emb"] = second_moment(head), second_moment(emb[-8:])
            timings["scores"] = time.monotonic() - start

            g = rng.standard_normal(dim)
            start = time.monotonic()
            step = c.step(name, g, skip_decay=True)  # > 131072 values: streamed
            timings["step"] = time.monotonic() - start
            session = c.get_session(name)
            assert session.dim == dim and session.step_count == 1
            assert session.sample_count == 2 * count + 2 * 180 + 80 + 20
            slices = session.block_slices()
            assert step.block_ranges == slices
            assert step.method == "layered" and len(step.blocks) == len(blocks)
            n = step.natural_gradient
            d = count * diag
            assert_close(n[:d], g[:d] / (diagonal + lam), SOLVE_RTOL, "diagonal blocks")
            for block, F in small.items():
                s = slices[block]
                expected = np.linalg.solve(F + lam * np.eye(len(F)), g[s])
                assert_close(n[s], expected, SOLVE_RTOL, block)
            np.testing.assert_array_equal(step.update, -n)

            start = time.monotonic()
            f32 = c.step(name, g, skip_decay=True, gradient_dtype="float32")
            timings["step float32"] = time.monotonic() - start
            g32 = g.astype(np.float32).astype(np.float64)
            assert_close(f32.natural_gradient[:d], g32[:d] / (diagonal + lam), SOLVE_RTOL,
                         "diagonal blocks, float32 gradient")
            fisher = c.get_fisher(name, block="layer7.weight")
            assert_close(fisher.matrix, diagonal[7 * diag:8 * diag], ESTIMATE_RTOL, "layer7")
    finally:
        stop_fisherd(process)
    print("3e7-parameter timings (s):", {k: round(v, 2) for k, v in timings.items()})
