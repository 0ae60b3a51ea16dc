"""Python client for fisherd, the natural-gradient service (gRPC API fisherd.v1).

    import fisherd
    with fisherd.Client("127.0.0.1:50051") as client:
        name = client.create_session("demo", dim=3, damping=1e-3)
        client.stream_scores(name, scores)           # rows x 3, any real dtype
        step = client.step(name, gradient, kl_budget=0.01)
        params += step.update

Layered sessions (a block-diagonal F: dense, diagonal, low-rank and Kronecker-factored
blocks) take create_session(..., blocks=[fisherd.Block(...), ...]) and
stream_scores(..., block=..., factor=...); steps of any size stream in chunks.
fisherd.ShardedLayeredSession spreads one layered session's blocks over several fisherd
replicas and answers the same steps.

Errors are raised as fisherd.FisherdError (attributes code: grpc.StatusCode, message).
The generated stubs are fisherd.v1.fisher_pb2 and fisherd.v1.fisher_pb2_grpc.
"""
from fisherd.client import (Block, BlockStats, Client, Fisher, Session, StepResult,
                            StreamResult, session_name)
from fisherd.errors import FisherdError
from fisherd.sharded import ShardedLayeredSession

Error = FisherdError

__all__ = ["Block", "BlockStats", "Client", "Error", "Fisher", "FisherdError", "Session",
           "ShardedLayeredSession", "StepResult", "StreamResult", "session_name"]
__version__ = "0.1.0"
