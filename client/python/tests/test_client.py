"""fisherd.Client against a real fisherd on loopback: round trips checked against NumPy
float64, dtype and shape handling, error mapping, resends after a cut stream, and
several workers adding up to one."""
import threading

import grpc
import numpy as np
import pytest

import fisherd
from tcp_proxy import TcpProxy


def spd_rows(dim, seed):
    """Float32 rows R (dim x dim) with F = R^T R / dim SPD and known exactly."""
    rng = np.random.default_rng(seed)
    factor = np.tril(0.3 * rng.standard_normal((dim, dim)), -1) + np.diag(
        1.0 + 0.5 * np.abs(rng.standard_normal(dim)))
    rows = factor.T.astype(np.float32)
    f = rows.astype(np.float64).T @ rows.astype(np.float64) / dim
    return rows, f


def test_sessions_round_trip(client, new_session):
    name = new_session(5, representation="diagonal", centered=True, decay=0.5, damping=0.25)
    assert name.startswith("sessions/pyc-")
    session = client.get_session(name)
    assert (session.name, session.dim, session.representation, session.centered,
            session.decay, session.damping) == (name, 5, "diagonal", True, 0.5, 0.25)
    assert (session.sample_count, session.step_count, session.worker_sequences) == (0, 0, {})
    assert client.get_session(name.split("/", 1)[1]).name == name  # a bare id works too
    assert name in [s.name for s in client.list_sessions()]
    assert client.get_session(new_session(2, decay=0.0)).decay == 1.0  # 0 means keep all
    client.delete_session(name)
    assert name not in [s.name for s in client.list_sessions()]


def test_step_and_product_match_float64(client, new_session):
    dim = 20
    rows, f = spd_rows(dim, seed=1)
    name = new_session(dim, damping=0.1)
    ack = client.stream_scores(name, rows, rows_per_batch=6)  # 4 batches, last one short
    assert (ack.sample_count, ack.rows, ack.batches, ack.duplicate) == (dim, dim, 4, False)
    g = np.random.default_rng(2).standard_normal(dim)

    step = client.step(name, g, skip_decay=True)  # eta 1, session damping
    expected = np.linalg.solve(f + 0.1 * np.eye(dim), g)
    np.testing.assert_allclose(step.natural_gradient, expected, rtol=1e-10)
    np.testing.assert_allclose(step.update, -expected, rtol=1e-10)
    assert isinstance(step.eta, float) and step.eta == 1.0
    assert step.natural_norm_sq == pytest.approx(g @ expected, rel=1e-10)
    assert step.predicted_kl == pytest.approx(0.5 * expected @ f @ expected, rel=1e-10)

    step = client.step(name, list(g), kl_budget=1e-3, damping=0.5)
    u = step.update
    assert 0.5 * u @ (f + 0.5 * np.eye(dim)) @ u == pytest.approx(1e-3, rel=1e-9)
    assert step.solver.damping == 0.5
    # Every method is direct: the summary has no iteration count (field 2 reserved).
    assert 2 not in step.solver.DESCRIPTOR.fields_by_number
    assert "iterations" not in step.solver.DESCRIPTOR.fields_by_name
    capped = client.step(name, g, kl_budget=1e-3, learning_rate=step.eta / 4)
    assert capped.eta == pytest.approx(step.eta / 4, rel=1e-12)

    v = np.arange(dim, dtype=np.float64)
    product, kl = client.fisher_vector_product(name, v)
    assert isinstance(product, np.ndarray) and product.dtype == np.float64
    np.testing.assert_allclose(product, f @ v, rtol=1e-10)
    assert kl == pytest.approx(0.5 * v @ f @ v, rel=1e-10)
    fisher = client.get_fisher(name, include_eigenvalues=True)
    np.testing.assert_allclose(fisher.matrix, f, rtol=1e-10, atol=1e-14)
    assert fisher.summary.min_eigenvalue == pytest.approx(np.linalg.eigvalsh(f)[0], rel=1e-8)


REFERENCE = np.array([[1, -2, 3], [0, 4, -1], [2, 2, 2], [-3, 1, 0]])


@pytest.mark.parametrize("convert", [
    lambda a: a.astype(np.float64),
    lambda a: a.astype(np.float32),
    lambda a: a.astype(np.float16),
    lambda a: a.astype(np.int64),
    lambda a: a.astype(np.int8),
    lambda a: a.tolist(),
    lambda a: [tuple(r) for r in a.tolist()],
    lambda a: np.asfortranarray(a.astype(np.float64)),    # not C-contiguous
    lambda a: np.repeat(a.astype(">f8"), 2, axis=0)[::2],  # big-endian, strided
], ids=["float64", "float32", "float16", "int64", "int8", "list", "tuples", "fortran",
        "strided-big-endian"])
def test_score_dtypes_and_layouts(client, new_session, convert):
    name = new_session(3)
    client.stream_scores(name, convert(REFERENCE), rows_per_batch=3)
    fisher = client.get_fisher(name).matrix
    r = REFERENCE.astype(np.float64)
    np.testing.assert_allclose(fisher, r.T @ r / len(r), rtol=1e-12)


def test_float64_is_rounded_to_float32(client, new_session):
    name = new_session(1, representation="diagonal")
    x = np.array([[1.0 + 1e-12], [np.pi]])
    client.stream_scores(name, x)
    (value,) = client.get_fisher(name).matrix
    x32 = x.astype(np.float32).astype(np.float64)
    assert value == pytest.approx((x32 ** 2).mean(), rel=1e-15)


def test_one_dimensional_input_is_one_row(client, new_session):
    name = new_session(4)
    ack = client.stream_scores(name, np.array([1.0, 2.0, 3.0, 4.0]))
    assert (ack.rows, ack.sample_count) == (1, 1)
    assert client.stream_scores(name, np.zeros((0, 4))) is None  # nothing to send


def test_weights(client, new_session):
    name = new_session(2, representation="diagonal", centered=True)
    rows = np.array([[1.0, 2.0], [3.0, -2.0]])
    w = np.array([1.0, 3.0])
    client.stream_scores(name, rows, weights=w)
    mean = (w[:, None] * rows).sum(0) / w.sum()
    expected = (w[:, None] * rows ** 2).sum(0) / w.sum() - mean ** 2
    np.testing.assert_allclose(client.get_fisher(name).matrix, expected, rtol=1e-12)
    assert client.get_session(name).weight_sum == 4.0


@pytest.mark.parametrize("scores, weights, needle", [
    (np.ones((2, 5)), None, "5 columns"),
    (np.ones((2, 2, 3)), None, "shape"),
    (np.array([[1.0, np.nan, 0.0]]), None, "row 0"),
    (np.array([[0.0, 0.0, 0.0], [1.0, 1e39, 0.0]]), None, "row 1"),  # overflows float32
    (np.array([["a", "b", "c"]]), None, "dtype"),
    (np.ones((2, 3)) + 1j, None, "dtype"),
    (np.ones((2, 3)), [1.0], "1 entries for 2 rows"),
    (np.ones((2, 3)), [1.0, -1.0], "weights[1]"),
])
def test_bad_input_is_rejected_before_sending(client, new_session, scores, weights, needle):
    name = new_session(3)
    with pytest.raises(fisherd.FisherdError) as error:
        client.stream_scores(name, scores, weights=weights)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in error.value.message
    assert client.get_session(name).sample_count == 0


def test_errors_carry_code_and_server_message(client, new_session):
    with pytest.raises(fisherd.FisherdError) as error:
        client.get_session("sessions/does-not-exist")
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "sessions/does-not-exist" in error.value.message
    assert "NOT_FOUND" in str(error.value)
    with pytest.raises(fisherd.FisherdError) as error:
        client.stream_scores("sessions/does-not-exist", np.ones((1, 2)))
    assert error.value.code == grpc.StatusCode.NOT_FOUND

    name = new_session(3)
    with pytest.raises(fisherd.FisherdError) as error:
        client.create_session(name.split("/", 1)[1], 3)
    assert error.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(fisherd.FisherdError) as error:
        client.create_session("x-bad-dim", 0)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(fisherd.FisherdError) as error:
        client.create_session("x-too-big", 1 << 20)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DIAGONAL" in error.value.message
    with pytest.raises(fisherd.FisherdError) as error:  # before any sample
        client.step(name, [1.0, 2.0, 3.0])
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.stream_scores(name, [[1.0, 0.0, 0.0]])
    with pytest.raises(fisherd.FisherdError) as error:  # rank one, undamped: singular
        client.step(name, [1.0, 2.0, 3.0])
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "damping" in error.value.message
    with pytest.raises(fisherd.FisherdError) as error:
        client.step(name, [1.0, 2.0], damping=1.0)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(fisherd.FisherdError) as error:
        client.fisher_vector_product(name, [1.0])
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error.value, fisherd.Error)


def test_unreachable_server_is_unavailable():
    with fisherd.Client("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(fisherd.FisherdError) as error:
            c.list_sessions()
        assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_sequences_continue_after_the_server_state(server, client, new_session):
    name = new_session(2)
    first = client.stream_scores(name, np.ones((10, 2)), worker_id="w", rows_per_batch=3)
    assert first.sequence == 4
    again = client.stream_scores(name, np.ones((2, 2)), worker_id="w", rows_per_batch=3)
    assert again.sequence == 5 and not again.duplicate
    with fisherd.Client(server) as other:  # never used "w": asks the server
        later = other.stream_scores(name, np.ones((1, 2)), worker_id="w")
    assert (later.sequence, later.duplicate, later.sample_count) == (6, False, 13)
    # The first client's own counter (6) is now stale: the server's higher sequence
    # reveals another sender with this worker_id instead of silently dropping rows.
    with pytest.raises(fisherd.FisherdError) as error:
        client.stream_scores(name, np.ones((1, 2)), worker_id="w")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # ... and afterwards it resumes from the server's state.
    assert client.stream_scores(name, np.ones((1, 2)), worker_id="w").sequence == 7
    assert client.get_session(name).sample_count == 14


def test_cut_stream_is_resent_and_counted_once(server, new_session):
    dim = 64
    rows = np.random.default_rng(5).standard_normal((4000, dim)).astype(np.float32)
    proxy = TcpProxy(server)
    try:
        with fisherd.Client(proxy.address, wait_for_ready=True) as c:
            name = new_session(dim)
            c.stream_scores(name, rows[:10], worker_id="cut")  # connection up
            # Cut the connection after about 12 of the 40 batches (25 KiB each).
            proxy.cut_after(12 * 100 * dim * 4)
            ack = c.stream_scores(name, rows[10:], worker_id="cut", rows_per_batch=100)
            # What the cut must cause: the proxy relays acks on the thread that cuts, so
            # the batch whose bytes triggered the cut was never acknowledged on that
            # stream; the client had to open another and send it again.
            assert ack.streams_opened >= 2 and ack.batches_resent >= 1, ack
            assert ack.duplicate_acks <= ack.batches_resent, ack
            assert ack.sample_count == len(rows)
            session = c.get_session(name)
            assert session.sample_count == len(rows)
            assert session.worker_sequences["cut"] == 1 + ack.batches
            r = rows.astype(np.float64)
            np.testing.assert_allclose(c.get_fisher(name).matrix, r.T @ r / len(r),
                                       rtol=1e-9, atol=1e-12)
    finally:
        proxy.close()


def test_repeated_cuts_lose_and_duplicate_nothing(server, new_session):
    dim, count, per_batch = 32, 20000, 50
    rows = np.random.default_rng(6).standard_normal((count, dim)).astype(np.float32)
    payload = count * dim * 4
    every = 200 << 10  # bytes to the server between cuts: 4x what a reconnect resends
    proxy = TcpProxy(server)
    try:
        # Cuts follow the traffic, not the clock: each one lands mid-stream however fast
        # or loaded the machine is. max_retries is generous because a reconnect may still
        # find the channel in backoff; the retry budget is not what is tested here.
        with fisherd.Client(proxy.address, wait_for_ready=True, max_backoff=0.2,
                            max_retries=200) as c:
            name = new_session(dim)
            proxy.cut_after(every, repeat=True)
            try:
                ack = c.stream_scores(name, rows, worker_id="cuts", rows_per_batch=per_batch)
            finally:
                proxy.stop_cutting()
            # The first transmissions alone carry the payload past `every` this often.
            assert proxy.cuts >= payload // every, (proxy.cuts, ack)
            # Every cut broke the stream then in use and (except perhaps one on the very
            # last bytes) made the client open another: none was absorbed silently.
            assert ack.streams_opened >= proxy.cuts, (proxy.cuts, ack)
            assert ack.batches_resent >= 1 and ack.duplicate_acks <= ack.batches_resent, ack
            session = c.get_session(name)
            assert session.sample_count == ack.sample_count == len(rows)
            assert session.worker_sequences["cuts"] == ack.batches == count // per_batch
            r = rows.astype(np.float64)
            np.testing.assert_allclose(c.get_fisher(name).matrix, r.T @ r / len(r),
                                       rtol=1e-9, atol=1e-12)
    finally:
        proxy.close()


def test_two_workers_equal_one_worker(client, new_session):
    dim = 48
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((3001, dim))
    weights = rng.uniform(0.5, 2.0, len(rows))
    one = new_session(dim, damping=1e-3)
    two = new_session(dim, damping=1e-3)
    client.stream_scores(one, rows, weights=weights, worker_id="solo", rows_per_batch=128)
    halves = [(rows[:1500], weights[:1500], "a"), (rows[1500:], weights[1500:], "b")]
    errors = []

    def work(part, w, worker):
        try:  # each worker its own client (connection), like separate processes
            with fisherd.Client(client.target) as c:
                c.stream_scores(two, part, weights=w, worker_id=worker, rows_per_batch=100)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=work, args=h) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s1, s2 = client.get_session(one), client.get_session(two)
    assert s1.sample_count == s2.sample_count == len(rows)
    assert s2.worker_sequences == {"a": 15, "b": 16}
    assert s1.weight_sum == pytest.approx(s2.weight_sum, rel=1e-12)
    np.testing.assert_allclose(client.get_fisher(two).matrix, client.get_fisher(one).matrix,
                               rtol=1e-10, atol=1e-12)
    v = rng.standard_normal(dim)
    (p1, k1), (p2, k2) = client.fisher_vector_product(one, v), client.fisher_vector_product(two, v)
    np.testing.assert_allclose(p2, p1, rtol=1e-10)
    assert k2 == pytest.approx(k1, rel=1e-10)
    g = rng.standard_normal(dim)
    np.testing.assert_allclose(client.step(two, g, kl_budget=0.01).update,
                               client.step(one, g, kl_budget=0.01).update, rtol=1e-8)


def test_bearer_token_is_sent_on_every_call():
    """An in-process Python server records the metadata the client sends."""
    from concurrent import futures
    from fisherd.v1 import fisher_pb2 as pb, fisher_pb2_grpc

    seen = []

    class Recorder(fisher_pb2_grpc.FisherServiceServicer):
        def GetSession(self, request, context):
            seen.append(dict(context.invocation_metadata()).get("authorization"))
            return pb.Session(name=request.name, config=pb.SessionConfig(dim=2))

        def StreamScores(self, request_iterator, context):
            seen.append(dict(context.invocation_metadata()).get("authorization"))
            for batch in request_iterator:
                yield pb.ScoreAck(worker_id=batch.worker_id, sequence=batch.sequence,
                                  sample_count=batch.rows)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fisher_pb2_grpc.add_FisherServiceServicer_to_server(Recorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with fisherd.Client(f"127.0.0.1:{port}", token="s3cret") as c:
            c.get_session("x")
            ack = c.stream_scores("x", np.ones((3, 2)), worker_id="w")
            assert (ack.sequence, ack.sample_count) == (1, 3)
        assert seen == ["Bearer s3cret", "Bearer s3cret", "Bearer s3cret"]
    finally:
        server.stop(None)


def test_session_calls_carry_the_routing_header():
    """What reaches a server: an in-process gRPC server records the metadata of every call
    as it arrives (before any handler runs, so stream opens count), answers the calls
    the client needs answered first (GetSession before a stream) and leaves the rest
    UNIMPLEMENTED. Every call naming the session carries x-fisherd-session with the bare
    id next to the token; ListSessions names none and carries none."""
    from concurrent import futures
    from fisherd.v1 import fisher_pb2 as pb

    answers = {"CreateSession": pb.Session(name="sessions/job-1.0-of-3"),
               "GetSession": pb.Session(name="sessions/job-1.0-of-3",
                                        config=pb.SessionConfig(dim=2)),
               "ListSessions": pb.ListSessionsResponse(),
               "DeleteSession": pb.DeleteSessionResponse()}
    seen = []

    class Recorder(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method.rsplit("/", 1)[1]
            seen.append((method, dict(details.invocation_metadata)))
            answer = answers.get(method)
            if answer is None:
                return None  # UNIMPLEMENTED, after the call's metadata arrived
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: answer,
                response_serializer=lambda message: message.SerializeToString())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Recorder(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    unimplemented = [
        lambda c, s: c.step(s, [1.0, 2.0]),
        lambda c, s: c.step(s, [1.0, 2.0], stream=True),
        lambda c, s: c.fisher_vector_product(s, [1.0, 2.0]),
        lambda c, s: c.get_fisher(s),
        lambda c, s: c.stream_scores(s, np.ones((3, 2)), worker_id="w"),
        lambda c, s: c.stream_blocks(s, [("fc1", "activations", np.ones((3, 2)))]),
    ]
    try:
        with fisherd.Client(f"127.0.0.1:{port}", token="t0k") as c:
            c.create_session("job-1.0-of-3", dim=2)
            c.list_sessions()
            for session in ("job-1.0-of-3", "sessions/job-1.0-of-3"):
                c.get_session(session)
                for call in unimplemented:
                    with pytest.raises(fisherd.FisherdError) as error:
                        call(c, session)
                    assert error.value.code == grpc.StatusCode.UNIMPLEMENTED
            c.delete_session("sessions/job-1.0-of-3")
            # No valid id has a non-ASCII character and gRPC refuses such a header
            # value: the call goes out without it, and the server judges the name.
            c.get_session("sessions/j\u00f6b")
    finally:
        server.stop(None)
    methods = {method for method, _ in seen}
    assert methods == {"CreateSession", "GetSession", "ListSessions", "DeleteSession",
                       "NaturalGradientStep", "StreamNaturalGradientStep",
                       "FisherVectorProduct", "GetFisher", "StreamScores"}, methods
    *named, (last, unnamed) = seen
    assert last == "GetSession" and "x-fisherd-session" not in unnamed
    for method, metadata in named:
        assert metadata.get("authorization") == "Bearer t0k", method
        if method == "ListSessions":
            assert "x-fisherd-session" not in metadata
        else:
            assert metadata.get("x-fisherd-session") == "job-1.0-of-3", (method, metadata)
    # Both streams were opened with the header, each after its GetSession.
    assert sum(method == "StreamScores" for method, _ in named) == 4


def test_stream_rejection_is_raised_not_retried():
    """A batch over the server's message limit ends the stream with RESOURCE_EXHAUSTED;
    the client raises it at once (no resend loop) and the batches before it stay applied."""
    from conftest import start_fisherd, stop_fisherd
    process, address = start_fisherd("--max-message-mb=1")
    try:
        with fisherd.Client(address, wait_for_ready=True) as c:
            name = c.create_session("limit", 1024)
            c.stream_scores(name, np.ones((64, 1024)), worker_id="w", rows_per_batch=64)
            opened = []  # StreamScores calls, counted where the client makes them
            make_call = c._stream_call
            c._stream_call = lambda *args, **kwargs: opened.append(1) or make_call(*args,
                                                                                    **kwargs)
            with pytest.raises(fisherd.FisherdError) as error:
                c.stream_scores(name, np.ones((1024, 1024)), worker_id="w", rows_per_batch=512)
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value
            assert len(opened) == 1, f"{len(opened)} streams opened: the rejection was retried"
            c._stream_call = make_call
            assert c.get_session(name).sample_count == 64
            # The client asks the server again and continues after sequence 1.
            ack = c.stream_scores(name, np.ones((2, 1024)), worker_id="w")
            assert (ack.sequence, ack.sample_count) == (2, 66)
    finally:
        stop_fisherd(process)
