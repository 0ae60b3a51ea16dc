"""Durable sessions keep a bounded log: snapshot rounds trim it even while a session sits
idle, and nothing acknowledged is lost by the trimming.

One session gets a batch and then nothing; another is fed steadily while rounds run every
0.2 s. An idle session's snapshot stays its state, so it must not keep the log from its
last change alive: after a few rounds the first segment (which holds both sessions'
creations and the idle session's batch) must be gone, and the segments kept few. A SIGKILL
and restart then recovers both sessions: counts and W exactly (weights 1), F to 1e-12
relative against NumPy's float64 sums (only the summation order differs from the
server's; a lost or doubled batch moves F by far more).

Run: FISHERD_BIN=build/server/fisherd /usr/bin/python3 -m pytest -q tests/durability/test_retention.py
"""
import os
import shutil
import tempfile
import time

import numpy as np

import harness  # tests/durability/harness.py: the fisherd process and client paths
import fisherd  # noqa: E402  (harness put client/python on the path)


def start(data_dir, log_dir):
    server = harness.Fisherd(data_dir, log_dir, flags=["--snapshot-interval-seconds=0.2"])
    server.start()
    client = fisherd.Client(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
    return server, client


def test_idle_session_does_not_pin_the_log_and_trimming_loses_nothing():
    work = tempfile.mkdtemp(prefix="fisherd-retention-")
    data_dir, log_dir = os.path.join(work, "data"), os.path.join(work, "logs")
    server = None
    try:
        server, client = start(data_dir, log_dir)
        rng = np.random.default_rng(3)
        idle_rows = rng.standard_normal((5, 8)).astype(np.float32)
        client.create_session("idle", dim=8)
        client.stream_scores("sessions/idle", idle_rows, worker_id="w")
        client.create_session("busy", dim=8, representation="diagonal")
        busy_rows = []
        # Feed the busy session (60 batches at least, some 15 rounds on a quiet machine)
        # until a round has dropped the first segment: what the test waits for is that
        # event, not an amount of time (rounds run late on a loaded machine). The limit
        # only keeps a server that never drops it from hanging the test: 60 s is some
        # 300 rounds.
        hang_guard = time.monotonic() + 60.0
        while True:
            rows = rng.standard_normal((4, 8)).astype(np.float32)
            client.stream_scores("sessions/busy", rows, worker_id="w")
            busy_rows.append(rows)
            segments = sorted(os.listdir(os.path.join(data_dir, "log")))
            if len(busy_rows) >= 60 and "00000000000000000001.wal" not in segments:
                break
            assert time.monotonic() < hang_guard, (
                f"the first segment is still kept after {len(busy_rows)} batches and 60 s "
                f"of rounds: {segments}")
            time.sleep(0.05)
        assert len(segments) <= 3, f"{len(segments)} segments kept: {segments}"

        client.close()
        server.kill()
        server, client = start(data_dir, log_dir)
        idle = client.get_session("sessions/idle")
        busy = client.get_session("sessions/busy")
        all_busy = np.concatenate(busy_rows).astype(np.float64)
        assert (idle.sample_count, idle.weight_sum) == (5, 5.0)
        assert (busy.sample_count, busy.weight_sum) == (len(all_busy), float(len(all_busy)))
        x = idle_rows.astype(np.float64)
        assert np.allclose(np.asarray(client.get_fisher("sessions/idle").matrix),
                           x.T @ x / 5, rtol=1e-12, atol=1e-15), "idle session's F changed"
        assert np.allclose(np.asarray(client.get_fisher("sessions/busy").matrix),
                           (all_busy ** 2).mean(axis=0), rtol=1e-12, atol=0)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
