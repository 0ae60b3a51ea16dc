"""Durable layered sessions: every block kind survives SIGKILL and drain bit for bit.

Two real fisherd processes receive exactly the same calls: a memory-only twin (the
oracle) and one with --data-dir that is SIGKILLed (recovery replays the log), drained
(recovery loads the snapshot) and SIGKILLed again (snapshot plus log) along the way.
After each restart, every block's and factor's F from GetFisher, and the answers of the
steps that follow (natural gradient, eta, predicted KL, factor age), must be identical
to the twin's: tolerance 0 (np.array_equal), since recovery promises bit-identical sums
and replays Kronecker refreshes at the same points, and both servers run the same code
on the same machine. The session decays (0.9) and refreshes its Kronecker factors every
3 steps, so the step count, the decay and the refresh clock are all part of the check;
its dense block starts in the low-rank phase (at most dim/16 rows held) and leaves it.

Run: FISHERD_BIN=build/server/fisherd /usr/bin/python3 -m pytest -q tests/durability/test_layered_recovery.py
"""
import os
import shutil
import tempfile

import numpy as np

import harness  # tests/durability/harness.py: the fisherd process and client paths
import fisherd  # noqa: E402  (harness put client/python on the path)

BLOCKS = [
    {"name": "fc", "kind": "kronecker", "in_features": 6, "out_features": 4, "bias": True},
    {"name": "window", "kind": "low_rank", "dim": 10, "max_rows": 6},
    {"name": "big", "kind": "dense", "dim": 48},   # low-rank start: 3 rows held, then dense
    {"name": "norm", "kind": "diagonal", "dim": 7},
    {"name": "conv", "kind": "kronecker", "in_features": 5, "out_features": 3, "bias": False},
]
PARTS = [("fc", "activations", 6), ("fc", "output_gradients", 4), ("window", None, 10),
         ("big", None, 48), ("norm", None, 7), ("conv", "activations", 5),
         ("conv", "output_gradients", 3)]
DIM = 4 * 7 + 10 + 48 + 7 + 3 * 5


class Server:
    """A fisherd process (harness.Fisherd) and a client of its own: a fresh channel per
    run, as a restarted worker would have."""

    def __init__(self, data_dir, log_dir):
        self.fisherd = harness.Fisherd(data_dir, log_dir)
        self.start()

    def start(self):
        self.fisherd.start()
        self.client = fisherd.Client(self.fisherd.address,
                                     options=[("grpc.use_local_subchannel_pool", 1)])

    def kill(self):
        self.client.close()
        self.fisherd.kill()

    def drain(self):
        self.client.close()
        assert self.fisherd.terminate() == 0, self.fisherd.stderr()

    def stop(self):
        self.fisherd.cleanup()


def feed(server, session, iteration):
    rng = np.random.default_rng(1000 + iteration)
    parts = []
    for block, factor, width in PARTS:
        rows = rng.standard_normal((2 + iteration % 3, width)).astype(np.float32)
        parts.append((block, factor, rows))
    server.client.stream_blocks(session, parts, worker_id="w")


def step(server, session, iteration):
    g = np.random.default_rng(5000 + iteration).standard_normal(DIM)
    return server.client.step(session, g, damping=0.05, kl_budget=1e-3)


def assert_same_estimates(twin, durable, session, when):
    for block in BLOCKS:
        factors = ["activations", "output_gradients"] if block["kind"] == "kronecker" else [None]
        for factor in factors:
            a = twin.client.get_fisher(session, block=block["name"], factor=factor)
            b = durable.client.get_fisher(session, block=block["name"], factor=factor)
            assert np.array_equal(np.asarray(a.matrix), np.asarray(b.matrix)), (
                f"{when}: block {block['name']} factor {factor}: F differs by "
                f"{np.max(np.abs(np.asarray(a.matrix) - np.asarray(b.matrix)))}")
    sa, sb = twin.client.get_session(session), durable.client.get_session(session)
    assert (sa.sample_count, sa.weight_sum, sa.step_count, sa.worker_sequences) == \
        (sb.sample_count, sb.weight_sum, sb.step_count, sb.worker_sequences), when


def assert_same_step(a, b, when):
    assert np.array_equal(a.natural_gradient, b.natural_gradient), (
        f"{when}: natural gradients differ by {np.max(np.abs(a.natural_gradient - b.natural_gradient))}")
    assert (a.eta, a.predicted_kl, a.solver.factor_age_steps) == \
        (b.eta, b.predicted_kl, b.solver.factor_age_steps), when


def test_layered_session_survives_kill_drain_and_kill_bit_for_bit():
    work = tempfile.mkdtemp(prefix="fisherd-layered-durable-")
    data_dir = os.path.join(work, "data")
    twin = Server(None, os.path.join(work, "twin-logs"))
    durable = Server(data_dir, os.path.join(work, "logs"))
    try:
        session = None
        for server in (twin, durable):
            session = server.client.create_session("net", blocks=BLOCKS, decay=0.9,
                                                    factor_refresh_period=3)
        restarts = {4: "kill", 8: "drain", 11: "kill"}
        ages = set()
        for iteration in range(14):
            for server in (twin, durable):
                feed(server, session, iteration)
            a, b = step(twin, session, iteration), step(durable, session, iteration)
            assert_same_step(a, b, f"iteration {iteration}")
            ages.add(a.solver.factor_age_steps)
            how = restarts.get(iteration)
            if how:
                durable.kill() if how == "kill" else durable.drain()
                durable.start()
                assert_same_estimates(twin, durable, session, f"after the {how} at {iteration}")
        # The refresh clock mattered: some steps used a decomposition older than the factor.
        assert max(ages) > 0, ages
        snapshots = os.listdir(os.path.join(data_dir, "snapshots"))
        assert any(name.startswith("net.") for name in snapshots), snapshots
    finally:
        twin.stop()
        durable.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    test_layered_session_survives_kill_drain_and_kill_bit_for_bit()
    print("ok")
