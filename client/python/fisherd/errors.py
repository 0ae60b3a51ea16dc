"""The one exception type of the fisherd client."""
import grpc


class FisherdError(Exception):
    """A failed call: the gRPC status `code` (a grpc.StatusCode) and the server's
    `message`, verbatim. Client-side checks (a wrong dim, NaN scores, bad options) raise
    it too, with the code the server would have used (INVALID_ARGUMENT)."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error):
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(error))


def invalid_argument(message):
    return FisherdError(grpc.StatusCode.INVALID_ARGUMENT, message)


# Codes after which a score stream is reopened and its unacknowledged batches resent
# (the server deduplicates by worker and sequence, so resending is always safe).
TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,        # connection refused or reset, server draining
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,          # the server cancelled the call (e.g. shutdown)
    grpc.StatusCode.DEADLINE_EXCEEDED,  # only the per-stream deadline reaches this test
})
