"""A client written in Python from the proto alone: sessions, raw float32 score
batches, steps checked against NumPy float64 dense solves, and every bad batch of
docs/design.md section 4 answered with its status while the session stays unchanged."""
import itertools

import grpc
import numpy as np
import pytest

_ids = itertools.count()


def spd_factor_rows(dim, seed):
    """Rows whose F = R^T R / dim is a known SPD matrix (exact float32 inputs)."""
    rng = np.random.default_rng(seed)
    factor = np.tril(0.3 * rng.standard_normal((dim, dim)), -1) + np.diag(
        1.0 + 0.5 * np.abs(rng.standard_normal(dim)))
    rows = factor.T.astype(np.float32)
    a = rows.astype(np.float64).T @ rows.astype(np.float64) / dim
    return rows, a


def create(stub, pb, dim, **config):
    session_id = f"py-{next(_ids)}"
    session = stub.CreateSession(pb.CreateSessionRequest(
        session_id=session_id, config=pb.SessionConfig(dim=dim, **config)))
    assert session.name == f"sessions/{session_id}"
    return session.name


def batch(pb, name, rows, worker="w", sequence=1, weights=None):
    rows = np.ascontiguousarray(rows, dtype="<f4")
    return pb.ScoreBatch(session=name, worker_id=worker, sequence=sequence,
                         rows=rows.shape[0], scores_f32=rows.tobytes(),
                         weights=[] if weights is None else list(weights))


def test_step_matches_a_float64_dense_solve(stub, fisher_pb):
    pb, _ = fisher_pb
    dim = 24
    rows, a = spd_factor_rows(dim, seed=1)
    name = create(stub, pb, dim, representation=pb.REPRESENTATION_DENSE)
    ack = stub.AddScores(batch(pb, name, rows))
    assert (ack.sequence, ack.duplicate, ack.sample_count) == (1, False, dim)

    g = np.random.default_rng(2).standard_normal(dim)
    for damping in (None, 0.25):
        request = pb.NaturalGradientStepRequest(session=name, gradient=g, skip_decay=True)
        if damping is not None:
            request.damping = damping
        response = stub.NaturalGradientStep(request)
        expected = np.linalg.solve(a + (damping or 0.0) * np.eye(dim), g)
        n = np.array(response.natural_gradient)
        # Two backward-stable float64 solves of a system with cond ~1e2: 1e-10 is
        # far above their round-off and far below any modelling error.
        assert np.linalg.norm(n - expected) <= 1e-10 * np.linalg.norm(expected)
        assert response.eta == 1.0
        np.testing.assert_allclose(response.update, -n, rtol=0, atol=0)
        assert response.natural_norm_sq == pytest.approx(g @ expected, rel=1e-10)
        assert response.solver.method == "cholesky"


def test_few_samples_at_large_dim_step_exactly(stub, fisher_pb):
    """A dense session with at most dim/16 samples steps through its rows (method
    "woodbury"); the answer is still the float64 dense solve's, and GetFisher's entries
    are F's. Once the samples pass dim/16 the same session answers by Cholesky."""
    pb, _ = fisher_pb
    dim, damping = 512, 1e-2
    rng = np.random.default_rng(9)
    rows = (rng.standard_normal((32, dim)) + 0.2).astype(np.float32)
    g = rng.standard_normal(dim)
    for centered in (False, True):
        name = create(stub, pb, dim, centered=centered, damping=damping)
        stub.AddScores(batch(pb, name, rows))
        s = rows.astype(np.float64)
        f = s.T @ s / len(s)
        if centered:
            f -= np.outer(s.mean(axis=0), s.mean(axis=0))
        damped = f + damping * np.eye(dim)
        expected = np.linalg.solve(damped, g)
        response = stub.NaturalGradientStep(pb.NaturalGradientStepRequest(
            session=name, gradient=g, skip_decay=True))
        assert response.solver.method == "woodbury"
        # cond(damped) is 2.5e3-3.7e3 here: 1e-10 is ~100 eps * cond, above both solves'
        # round-off and far below any wrong formula.
        n = np.array(response.natural_gradient)
        assert np.linalg.norm(n - expected) <= 1e-10 * np.linalg.norm(expected)
        messages = list(stub.GetFisher(pb.GetFisherRequest(session=name, include_matrix=True)))
        values = np.array([v for m in messages for v in m.values]).reshape(dim, dim)
        np.testing.assert_allclose(values, f, rtol=0, atol=1e-13 * np.abs(f).max())

        stub.AddScores(batch(pb, name, rows[:1], sequence=2))
        after = stub.NaturalGradientStep(pb.NaturalGradientStepRequest(
            session=name, gradient=g, skip_decay=True))
        assert after.solver.method == "cholesky"


def test_kl_budget_and_learning_rate_cap(stub, fisher_pb):
    pb, _ = fisher_pb
    dim = 10
    rows, a = spd_factor_rows(dim, seed=3)
    name = create(stub, pb, dim, damping=0.1)
    stub.AddScores(batch(pb, name, rows))
    g = np.linspace(-1, 1, dim)
    response = stub.NaturalGradientStep(pb.NaturalGradientStepRequest(
        session=name, gradient=g, kl_budget=1e-3))
    u = np.array(response.update)
    assert 0.5 * u @ (a + 0.1 * np.eye(dim)) @ u == pytest.approx(1e-3, rel=1e-10)
    assert response.predicted_kl == pytest.approx(0.5 * u @ a @ u, rel=1e-10)
    capped = stub.NaturalGradientStep(pb.NaturalGradientStepRequest(
        session=name, gradient=g, kl_budget=1e-3, learning_rate=response.eta / 2))
    assert capped.eta == pytest.approx(response.eta / 2, rel=1e-15)


def test_fisher_vector_product_and_get_fisher(stub, fisher_pb):
    pb, _ = fisher_pb
    dim = 16
    rows, a = spd_factor_rows(dim, seed=4)
    name = create(stub, pb, dim)
    stub.AddScores(batch(pb, name, rows[:7], sequence=1))
    stub.AddScores(batch(pb, name, rows[7:], sequence=2))
    v = np.arange(dim, dtype=float)
    fvp = stub.FisherVectorProduct(pb.FisherVectorProductRequest(session=name, vector=v))
    np.testing.assert_allclose(fvp.product, a @ v, rtol=1e-12)
    assert fvp.quadratic_kl == pytest.approx(0.5 * v @ a @ v, rel=1e-12)

    messages = list(stub.GetFisher(pb.GetFisherRequest(
        session=name, include_matrix=True, include_eigenvalues=True)))
    summary = messages[0].summary
    assert summary.dim == dim and summary.sample_count == dim
    assert summary.trace == pytest.approx(np.trace(a), rel=1e-12)
    eigenvalues = np.linalg.eigvalsh(a)
    assert summary.min_eigenvalue == pytest.approx(eigenvalues[0], rel=1e-10)
    assert summary.max_eigenvalue == pytest.approx(eigenvalues[-1], rel=1e-10)
    values = [v for m in messages for v in m.values]
    np.testing.assert_allclose(np.reshape(values, (dim, dim)), a, rtol=1e-12, atol=1e-15)


def test_repeated_float_scores_and_weights(stub, fisher_pb):
    pb, _ = fisher_pb
    name = create(stub, pb, 3, representation=pb.REPRESENTATION_DIAGONAL, centered=True)
    rows = np.array([[1, 2, 3], [3, -2, 1]], dtype=np.float32)
    stub.AddScores(pb.ScoreBatch(session=name, worker_id="w", sequence=1, rows=2,
                                 scores=rows.ravel().tolist(), weights=[1.0, 3.0]))
    w = np.array([1.0, 3.0])
    mean = (w[:, None] * rows).sum(0) / w.sum()
    expected = (w[:, None] * rows ** 2).sum(0) / w.sum() - mean ** 2
    messages = list(stub.GetFisher(pb.GetFisherRequest(session=name, include_matrix=True)))
    np.testing.assert_allclose([v for m in messages for v in m.values], expected, rtol=1e-12)


def stats(stub, pb, name):
    return stub.GetSession(pb.GetSessionRequest(name=name)).stats


@pytest.mark.parametrize("case", [
    "short_bytes", "dim_mismatch", "nan", "inf", "negative_weight", "zero_rows",
    "both_fields", "neither_field", "weights_count",
])
def test_bad_batches_are_rejected_whole(stub, fisher_pb, case):
    pb, _ = fisher_pb
    dim = 4
    name = create(stub, pb, dim)
    good = np.ones((3, dim), dtype=np.float32)
    stub.AddScores(batch(pb, name, good, sequence=1))
    before = stats(stub, pb, name)

    rows = good.copy()
    message = batch(pb, name, rows, sequence=2)
    if case == "short_bytes":
        message.scores_f32 = message.scores_f32[:-4]
    elif case == "dim_mismatch":
        message = batch(pb, name, np.ones((3, dim + 1), np.float32), sequence=2)
        message.rows = 3
    elif case == "nan":
        rows[1, 2] = np.nan
        message = batch(pb, name, rows, sequence=2)
    elif case == "inf":
        rows[0, 0] = np.inf
        message = batch(pb, name, rows, sequence=2)
    elif case == "negative_weight":
        message = batch(pb, name, rows, sequence=2, weights=[1.0, -1.0, 1.0])
    elif case == "zero_rows":
        message = pb.ScoreBatch(session=name, worker_id="w", sequence=2, rows=0)
    elif case == "both_fields":
        message.scores.extend(rows.ravel().tolist())
    elif case == "neither_field":
        message.ClearField("scores_f32")
    elif case == "weights_count":
        message = batch(pb, name, rows, sequence=2, weights=[1.0, 1.0])

    with pytest.raises(grpc.RpcError) as error:
        stub.AddScores(message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details()
    assert '"w"' in details and "2" in details, details  # names worker and sequence
    after = stats(stub, pb, name)
    assert (after.sample_count, after.weight_sum) == (before.sample_count, before.weight_sum)
    assert after.worker_sequences["w"] == 1


def test_unknown_session_and_step_errors(stub, fisher_pb):
    pb, _ = fisher_pb
    with pytest.raises(grpc.RpcError) as error:
        stub.AddScores(batch(pb, "sessions/nope", np.ones((1, 2), np.float32)))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "sessions/nope" in error.value.details()

    name = create(stub, pb, 3)
    with pytest.raises(grpc.RpcError) as error:
        stub.NaturalGradientStep(pb.NaturalGradientStepRequest(session=name, gradient=[1, 2, 3]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.AddScores(batch(pb, name, np.array([[1, 0, 0]], np.float32)))
    with pytest.raises(grpc.RpcError) as error:  # rank one, no damping: singular
        stub.NaturalGradientStep(pb.NaturalGradientStepRequest(session=name, gradient=[1, 2, 3]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "damping" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.NaturalGradientStep(pb.NaturalGradientStepRequest(session=name, gradient=[1, 2]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:  # an answer form this server does not know
        stub.NaturalGradientStep(pb.NaturalGradientStepRequest(
            session=name, gradient=[1, 2, 3], damping=1.0, answer=7))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "answer is 7" in error.value.details()
    assert stats(stub, pb, name).step_count == 0


def test_duplicates_are_counted_once(stub, fisher_pb):
    pb, _ = fisher_pb
    name = create(stub, pb, 2)
    rows = np.ones((5, 2), np.float32)
    first = stub.AddScores(batch(pb, name, rows, sequence=3))
    again = stub.AddScores(batch(pb, name, rows, sequence=3))
    older = stub.AddScores(batch(pb, name, rows, sequence=2))
    assert not first.duplicate and again.duplicate and older.duplicate
    assert (again.sequence, again.sample_count) == (3, 5)
    assert stats(stub, pb, name).sample_count == 5


def test_stream_ends_at_the_first_bad_batch(stub, fisher_pb):
    pb, _ = fisher_pb
    name = create(stub, pb, 2)
    rows = np.ones((4, 2), np.float32)
    bad = batch(pb, name, rows, sequence=3)
    bad.scores_f32 = bad.scores_f32[:5]
    requests = [batch(pb, name, rows, sequence=1), batch(pb, name, rows, sequence=2), bad,
                batch(pb, name, rows, sequence=4)]
    acks = []
    with pytest.raises(grpc.RpcError) as error:
        for ack in stub.StreamScores(iter(requests)):
            acks.append(ack)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [a.sequence for a in acks] == [1, 2]
    after = stats(stub, pb, name)
    assert after.sample_count == 8 and after.worker_sequences["w"] == 2


def test_sessions_crud_and_limits(stub, fisher_pb):
    pb, _ = fisher_pb
    name = create(stub, pb, 5, decay=0.0)
    session = stub.GetSession(pb.GetSessionRequest(name=name))
    assert session.config.decay == 1.0  # 0 means keep everything
    assert name in [s.name for s in stub.ListSessions(pb.ListSessionsRequest()).sessions]
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateSession(pb.CreateSessionRequest(session_id=name.split("/")[1],
                                                   config=pb.SessionConfig(dim=5)))
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateSession(pb.CreateSessionRequest(session_id="huge",
                                                   config=pb.SessionConfig(dim=1 << 20)))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DIAGONAL" in error.value.details()
    for bad in (pb.SessionConfig(dim=0), pb.SessionConfig(dim=3, decay=1.5),
                pb.SessionConfig(dim=3, damping=-1)):
        with pytest.raises(grpc.RpcError) as error:
            stub.CreateSession(pb.CreateSessionRequest(session_id="bad", config=bad))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.DeleteSession(pb.DeleteSessionRequest(name=name))
    with pytest.raises(grpc.RpcError) as error:
        stub.GetSession(pb.GetSessionRequest(name=name))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_default_sessions_multiply_large_batches_in_float64(stub, fisher_pb):
    """At dim >= 256 with batches of 256 rows (where the optional float32 kernel would
    apply) a default session still gives the float64 answer. Here cond(F) ~ 1e7: the
    float32 kernel's ~1e-7 relative error in F shows as ~4e-2 in the step, while float64
    products leave only solver round-off, at most ~cond * 1e-16 = 1e-9 (6e-11 measured)."""
    pb, _ = fisher_pb
    dim, n = 300, 1024
    rng = np.random.default_rng(9)
    mixing = rng.standard_normal((dim, dim)) * np.logspace(0, -1.2, dim)
    rows = (rng.standard_normal((n, dim)) @ mixing.T).astype(np.float32)
    name = create(stub, pb, dim)
    for k, start in enumerate(range(0, n, 256)):
        stub.AddScores(batch(pb, name, rows[start:start + 256], sequence=k + 1))
    f = rows.astype(np.float64).T @ rows.astype(np.float64) / n
    assert np.linalg.cond(f) > 1e6
    g = rng.standard_normal(dim)
    response = stub.NaturalGradientStep(pb.NaturalGradientStepRequest(session=name, gradient=g))
    expected = np.linalg.solve(f, g)
    error = np.linalg.norm(np.array(response.natural_gradient) - expected)
    assert error <= 1e-8 * np.linalg.norm(expected)

    fast = create(stub, pb, dim, float32_products=True)
    session = stub.GetSession(pb.GetSessionRequest(name=fast))
    assert session.config.float32_products
