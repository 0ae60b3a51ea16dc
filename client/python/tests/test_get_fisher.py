"""Client.get_fisher's reading of the GetFisher stream: against a stub stream, every way
an answer can break the protocol (as the C++ client checks it) is a FisherdError
(DATA_LOSS) naming the problem, never an IndexError or a silently garbled matrix; against
the real fisherd, multi-block dense and diagonal answers assemble to NumPy's float64 F."""
import grpc
import numpy as np
import pytest

import fisherd
from fisherd.v1 import fisher_pb2 as pb


class StubFisherService:
    """Answers GetFisher with a fixed list of messages, or raises `error` after them."""

    def __init__(self, messages, error=None):
        self.messages = messages
        self.error = error
        self.requests = []

    def GetFisher(self, request, **kwargs):  # noqa: N802 (the stub's method name)
        self.requests.append(request)

        def answer():
            yield from self.messages
            if self.error is not None:
                raise self.error
        return answer()


def summary(dim, representation=pb.REPRESENTATION_DENSE, **fields):
    return pb.GetFisherResponse(summary=pb.FisherSummary(dim=dim, representation=representation,
                                                         **fields))


def rows(offset, count, values):
    return pb.GetFisherResponse(row_offset=offset, row_count=count, values=values)


def fetch(messages, error=None, **kwargs):
    with fisherd.Client("127.0.0.1:1") as c:  # never connects: the stub answers
        c._stub = StubFisherService(messages, error)
        return c.get_fisher("s", **kwargs)


def test_a_well_formed_stream_assembles():
    dense = fetch([summary(2), rows(0, 1, [1.0, 2.0]), rows(1, 1, [2.0, 5.0])])
    np.testing.assert_array_equal(dense.matrix, [[1.0, 2.0], [2.0, 5.0]])
    diagonal = fetch([summary(3, pb.REPRESENTATION_DIAGONAL), rows(0, 2, [1.0, 2.0]),
                      pb.GetFisherResponse(), rows(2, 1, [3.0])])
    np.testing.assert_array_equal(diagonal.matrix, [1.0, 2.0, 3.0])
    block = fetch([summary(2, block="emb", block_kind=pb.BLOCK_KIND_DIAGONAL),
                   rows(0, 2, [4.0, 5.0])], block="emb")
    np.testing.assert_array_equal(block.matrix, [4.0, 5.0])
    only = fetch([summary(4)], include_matrix=False)
    assert only.matrix is None and only.summary.dim == 4


@pytest.mark.parametrize("messages, problem", [
    ([], "empty response stream"),
    ([rows(0, 1, [1.0, 2.0])], "first message carries no summary"),
    # Blocks that do not follow each other.
    ([summary(2), rows(1, 1, [1.0, 2.0]), rows(0, 1, [1.0, 2.0])], "starts at row 1, expected 0"),
    ([summary(2), rows(0, 1, [1.0, 2.0]), rows(0, 1, [1.0, 2.0])], "starts at row 0, expected 1"),
    # Shapes: row_count disagrees with the values. The totals match (3 rows, 9 values), so
    # only a per-block check catches it.
    ([summary(3), rows(0, 1, [1.0] * 6), rows(1, 2, [1.0] * 3)],
     "block at row 0 has 6 values for 1 rows of 3"),
    ([summary(2), rows(0, 2, [])], "block at row 0 has 0 values for 2 rows of 2"),
    ([summary(2, pb.REPRESENTATION_DIAGONAL), rows(0, 1, [1.0, 2.0])],
     "block at row 0 has 2 values for 1 rows of 1"),
    # More rows than dim, or fewer.
    ([summary(2), rows(0, 3, [1.0] * 6)], "rows [0, 3) exceed dim 2"),
    ([summary(2), rows(0, 1, [1.0, 2.0])], "stream ended after 1 of 2 rows"),
    ([summary(2)], "stream ended after 0 of 2 rows"),
])
def test_a_broken_stream_is_a_data_loss_error_naming_the_problem(messages, problem):
    with pytest.raises(fisherd.FisherdError) as error:
        fetch(messages)
    assert error.value.code == grpc.StatusCode.DATA_LOSS, error.value
    assert problem in error.value.message
    assert "GetFisher" in error.value.message


def test_a_failed_call_is_its_status_even_after_some_rows():
    class Failed(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection reset"
    with pytest.raises(fisherd.FisherdError) as error:
        fetch([summary(2), rows(0, 1, [1.0, 2.0])], error=Failed())
    assert (error.value.code, error.value.message) == (grpc.StatusCode.UNAVAILABLE,
                                                       "connection reset")


def test_real_server_multi_block_answers(client, new_session):
    # Dense dim 400 is 1.2 MiB of doubles: more than one block of about 1 MiB.
    rng = np.random.default_rng(11)
    dense, diagonal = new_session(400), new_session(3000, representation="diagonal")
    try:
        scores = rng.standard_normal((50, 400)).astype(np.float32)
        client.stream_scores(dense, scores)
        s = scores.astype(np.float64)
        np.testing.assert_allclose(client.get_fisher(dense).matrix, s.T @ s / len(s),
                                   rtol=1e-12, atol=1e-14)
        d = rng.standard_normal((20, 3000)).astype(np.float32)
        client.stream_scores(diagonal, d)
        np.testing.assert_allclose(client.get_fisher(diagonal).matrix,
                                   (d.astype(np.float64) ** 2).mean(axis=0), rtol=1e-12)
        assert client.get_fisher(dense, include_matrix=False).matrix is None
    finally:
        client.delete_session(dense)
        client.delete_session(diagonal)
    with pytest.raises(fisherd.FisherdError) as error:
        client.get_fisher(dense)
    assert error.value.code == grpc.StatusCode.NOT_FOUND
