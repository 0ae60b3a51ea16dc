"""fault_test: fisherd kills itself (FISHERD_FAULT=<point>:<n>, SIGKILL) at each crash
point of the journal and the snapshot writer; a restart without the fault must find
every acknowledged batch, and statistics equal to the reference of exactly the
recovered sequences (as crash_test's checks (a) and (b)).

journal-after-sync: the group that was synced but whose acks were never sent must be
recovered (at least one batch is above its worker's last ack), and resending those
batches must be answered duplicate=true. For every point, the batches recovered above
the last ack are resent (duplicate=true expected) and the next one is applied as new.
The snapshot points run with --snapshot-interval-seconds=0.2, so a snapshot round (and
the log truncation after it) comes every 0.2 s while the load runs; if the point was
not reached by the deadline, a SIGTERM (drain: a final snapshot round) must reach it.

test_fault_point_one_batch_at_a_time: the journal points again with one batch in flight
at a time, where the number of batches recovered beyond the last ack is exact (0 for
journal-before-write, 1 for journal-after-write and journal-after-sync); and
test_fault_point_one_step_at_a_time the same for natural-gradient steps (step_count).
"""
import shutil
import time

import grpc
import pytest

import harness

WORKERS = 4
# journal points: the n-th group commit, well after the two CreateSession records.
POINTS = [
    ("journal-before-write", 40),
    ("journal-after-write", 40),
    ("journal-after-sync", 40),
    ("snapshot-before-rename", 1),
    ("snapshot-before-dir-sync", 1),
    ("journal-before-truncate", 1),
    ("snapshot-before-rename", 3),
    ("journal-before-truncate", 3),
]
SNAPSHOT_POINTS = {"snapshot-before-rename", "snapshot-before-dir-sync",
                   "journal-before-truncate"}


@pytest.mark.parametrize("point,occurrence", POINTS,
                         ids=[f"{p}:{n}" for p, n in POINTS])
def test_fault_point(tmp_path, point, occurrence):
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    snapshotting = point in SNAPSHOT_POINTS
    flags = ["--snapshot-interval-seconds=0.2" if snapshotting
             else "--snapshot-interval-seconds=0"]
    references = {spec.session_id: harness.Reference(spec) for spec in harness.SPECS}
    log = harness.AckLog()
    next_sequence = {(w, spec.session_id): 1 for w in range(WORKERS) for spec in harness.SPECS}
    begin = time.monotonic()

    faulty = harness.Fisherd(data_dir, logs, flags=flags, fault=f"{point}:{occurrence}")
    with harness.running(faulty):
        faulty.start()
        stub = faulty.stub()
        harness.create_sessions(stub)
        run = harness.LoadRun(faulty.address, range(WORKERS), harness.SPECS, next_sequence,
                              log, stepper=(point != "journal-after-sync"),
                              dead_check=lambda: faulty.wait_exit(2) is not None).start()
        status = faulty.wait_exit(20)
        how = "under load"
        if status is None and snapshotting:
            run.stop()
            how = "on drain (SIGTERM)"
            faulty.process.send_signal(15)
            status = faulty.wait_exit(30)
        run.killed.set()
        run.stop()
        if status is None:
            faulty.kill()
            pytest.fail(f"FISHERD_FAULT={point}:{occurrence} was never reached within 20 s "
                        f"of load{' and a drain' if snapshotting else ''}; stderr:\n"
                        f"{faulty.stderr()}")
        assert status == -9, (f"FISHERD_FAULT={point}:{occurrence}: fisherd exited with "
                              f"{status}, not SIGKILL (-9); stderr:\n{faulty.stderr()}")
        assert not log.problems, "\n".join(log.problems)
    died = time.monotonic()
    listing_after_crash = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))

    server = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"restart after FISHERD_FAULT={point}:{occurrence} ({how}) failed: "
                        f"{failure}\ndata directory: {listing_after_crash}")
        stub = server.stub()
        context = f"after {point}:{occurrence} ({how}): "
        states = {spec: harness.read_state(stub, spec) for spec in harness.SPECS}
        problems, worst = harness.check_recovered(states, log, references, context)
        for spec, state in states.items():
            if state.step_count < run.steps_ok[spec.session_id]:
                problems.append(f"{context}session {spec.session_id}: step_count "
                                f"{state.step_count} < {run.steps_ok[spec.session_id]} "
                                "steps answered OK")
        assert not problems, "\n".join(problems) + f"\nstart-up: {server.startup_line()}"

        # Recovered but never acknowledged: must be duplicates when resent.
        unacked = []
        for spec, state in states.items():
            for w in range(WORKERS):
                acked = log.acked.get((w, spec.session_id), 0)
                recovered = state.worker_sequences.get(w, 0)
                unacked += [(spec, w, s, recovered) for s in range(acked + 1, recovered + 1)]
        if point == "journal-after-sync":
            assert unacked, (f"{context}no batch was recovered beyond the acknowledged ones, "
                             "but the group synced before the crash had unacknowledged "
                             f"batches (acked {sorted(log.acked.items())}, recovered "
                             f"{ {s.session_id: st.worker_sequences for s, st in states.items()} })")
        for spec, w, sequence, recovered in unacked:
            ack = stub.AddScores(harness.batch_message(spec, w, sequence), timeout=20)
            assert ack.duplicate and ack.sequence == recovered, (
                f"{context}resent batch {sequence} of worker {w} session {spec.session_id} "
                f"(recovered, never acked): ack (sequence {ack.sequence}, duplicate="
                f"{ack.duplicate}), expected a duplicate of {recovered}")
        for spec, state in states.items():
            for w in range(WORKERS):
                following = state.worker_sequences.get(w, 0) + 1
                ack = stub.AddScores(harness.batch_message(spec, w, following), timeout=20)
                assert not ack.duplicate and ack.sequence == following, (
                    f"{context}batch {following} of worker {w} session {spec.session_id} "
                    f"after recovery: ack (sequence {ack.sequence}, duplicate="
                    f"{ack.duplicate})")
                log.note_sent(w, spec, following)
                log.note_ack(w, spec, following)
        assert server.terminate() == 0, server.stderr()

    # The drain's snapshots must recover the same (the resumed batches included).
    again = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"])
    with harness.running(again):
        again.start()
        stub = again.stub()
        states = {spec: harness.read_state(stub, spec) for spec in harness.SPECS}
        problems, worst2 = harness.check_recovered(states, log, references,
                                                   f"{context}after drain and restart: ")
        for spec, state in states.items():
            for w in range(WORKERS):
                if state.worker_sequences.get(w, 0) != log.acked.get((w, spec.session_id)):
                    problems.append(f"{context}after drain and restart: worker {w} session "
                                    f"{spec.session_id}: sequence "
                                    f"{state.worker_sequences.get(w, 0)} != last acked "
                                    f"{log.acked.get((w, spec.session_id))}")
        assert not problems, "\n".join(problems)
        assert again.terminate() == 0
    listing = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))
    shutil.rmtree(data_dir)  # kept when the test fails
    print(f"\n{point}:{occurrence}: died {how} after {died - begin:.2f} s; "
          f"{sum(log.acked.values())} acked batches, {len(unacked)} recovered beyond acks; "
          f"max relative F error {max(worst, worst2):.1e}; start-up: {server.startup_line()}"
          f"\n  after the crash: {listing_after_crash}\n  at the end: {listing}")


# One batch at a time (unary AddScores, the next sent only after the previous ack): the
# batch in flight at the crash is exactly the one after the last ack, so the count of
# batches recovered beyond the acks is exact: 0 when the process died before writing its
# record, 1 when it died after writing it (the page cache survives a process kill) or
# after syncing it (never acknowledged, yet durable).
SEQUENTIAL = [("journal-before-write", 0), ("journal-after-write", 1),
              ("journal-after-sync", 1)]


@pytest.mark.parametrize("point,beyond", SEQUENTIAL, ids=[p for p, _ in SEQUENTIAL])
def test_fault_point_one_batch_at_a_time(tmp_path, point, beyond):
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    occurrence = 12  # after the two CreateSession records
    faulty = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"],
                             fault=f"{point}:{occurrence}")
    acked = 0
    with harness.running(faulty):
        faulty.start()
        stub = faulty.stub()
        harness.create_sessions(stub)
        error = None
        for sequence in range(1, 200):
            try:
                ack = stub.AddScores(harness.batch_message(harness.DENSE, 0, sequence),
                                     timeout=20)
            except grpc.RpcError as failure:
                error = failure
                break
            assert ack.sequence == sequence and not ack.duplicate, ack
            acked = sequence
        status = faulty.wait_exit(10)
        assert error is not None and status == -9, (
            f"FISHERD_FAULT={point}:{occurrence}: after {acked} acks, call error "
            f"{error and error.code()}, exit status {status}; stderr:\n{faulty.stderr()}")
    server = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"restart after FISHERD_FAULT={point}:{occurrence}: {failure}")
        stub = server.stub()
        state = harness.read_state(stub, harness.DENSE)
        recovered = state.worker_sequences.get(0, 0)
        assert recovered == acked + beyond, (
            f"{point}: batches 1..{acked} acked, batch {acked + 1} in flight at the crash; "
            f"recovered sequence {recovered}, expected {acked + beyond}")
        problems = harness.compare_state(
            state, harness.Reference(harness.DENSE).expected({0: recovered}), f"{point}: ")
        assert not problems, "\n".join(problems)
        if beyond:
            ack = stub.AddScores(harness.batch_message(harness.DENSE, 0, recovered), timeout=20)
            assert ack.duplicate and ack.sequence == recovered, (
                f"{point}: batch {recovered} (durable, never acked) resent: ack {ack}")
        ack = stub.AddScores(harness.batch_message(harness.DENSE, 0, recovered + 1),
                             timeout=20)
        assert not ack.duplicate and ack.sequence == recovered + 1, ack
        assert server.terminate() == 0
    shutil.rmtree(data_dir)
    print(f"\n{point} (one batch at a time): {acked} acked, {recovered} recovered")


@pytest.mark.parametrize("point,beyond", SEQUENTIAL, ids=[p for p, _ in SEQUENTIAL])
def test_fault_point_one_step_at_a_time(tmp_path, point, beyond):
    """The same for steps: 5 batches, then natural-gradient steps one at a time until
    the crash; the recovered step count must be the steps answered plus `beyond`, and
    the statistics those of the 5 batches (decay=1: steps do not change the sums)."""
    import numpy as np
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    occurrence = 12  # 2 creations, 5 batches, then the 5th step
    faulty = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"],
                             fault=f"{point}:{occurrence}")
    answered = 0
    rng = np.random.default_rng(7)
    with harness.running(faulty):
        faulty.start()
        stub = faulty.stub()
        harness.create_sessions(stub)
        for sequence in range(1, 6):
            stub.AddScores(harness.batch_message(harness.DENSE, 0, sequence), timeout=20)
        error = None
        for _ in range(200):
            try:
                stub.NaturalGradientStep(harness.step_request(harness.DENSE, rng), timeout=20)
            except grpc.RpcError as failure:
                error = failure
                break
            answered += 1
        status = faulty.wait_exit(10)
        assert error is not None and status == -9, (
            f"FISHERD_FAULT={point}:{occurrence}: after {answered} steps, call error "
            f"{error and error.code()}, exit status {status}; stderr:\n{faulty.stderr()}")
    server = harness.Fisherd(data_dir, logs, flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"restart after FISHERD_FAULT={point}:{occurrence}: {failure}")
        state = harness.read_state(server.stub(), harness.DENSE)
        assert state.step_count == answered + beyond, (
            f"{point}: {answered} steps answered, the next in flight at the crash; "
            f"recovered step_count {state.step_count}, expected {answered + beyond}")
        problems = harness.compare_state(
            state, harness.Reference(harness.DENSE).expected({0: 5}), f"{point}: ")
        assert not problems, "\n".join(problems)
        assert server.terminate() == 0
    shutil.rmtree(data_dir)
    print(f"\n{point} (one step at a time): {answered} answered, step_count "
          f"{state.step_count}")


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
