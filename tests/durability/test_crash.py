"""crash_test: SIGKILL fisherd at random moments under load, on one data directory.

Each cycle: start fisherd on the same --data-dir; 8 worker threads stream deterministic
batches (harness.batch_content) into a dense (dim 64) and a diagonal (dim 512) session,
each resuming after the sequence the server recovered for it; a stepper thread takes
natural-gradient steps on both; after a seeded random 0.1-1.5 s the test SIGKILLs the
server. Some cycles snapshot every 0.25 s (recovery then starts from a snapshot and
replays the log after it, and kills land in the middle of snapshot rounds and log
truncation), others only log.

After every restart, before any new load:
 (a) every sequence whose ack a worker received is <= the recovered sequence of that
     worker and session, and no recovered sequence exceeds what was ever sent;
 (b) sample_count and W equal the float64 reference of exactly the batches
     1..recovered sequence of every worker (exactly), and F (dense matrix, diagonal)
     equals it to relative 1e-12 (harness.compare_state explains the bound);
 (c) the step count is at least the previous one plus the steps answered OK, and at
     most that plus the steps attempted (a step is acknowledged only once logged).
A third session name, "churn", is created, fed and deleted over and over meanwhile
(class Churner: deletions and re-creations of one name must survive kills exactly);
test_recreated_session_survives_restart does the same deterministically (create, feed,
delete, create again, feed, restart after SIGKILL or after a drain).
At the end every worker resends all its batches from sequence 1: the ones already
applied must come back duplicate=true, the rest (sent before the last kill, lost with
it) applied, and the statistics must equal the reference of every batch exactly once;
then a drain (SIGTERM, exit 0) and a last restart from the drain's snapshots must show
the same.

Environment: FISHERD_CRASH_CYCLES (default 20), FISHERD_DURABILITY_SEED.
"""
import os
import random
import shutil
import threading
import time

import grpc
import pytest

import harness
from harness import pb, pb_grpc

CYCLES = int(os.environ.get("FISHERD_CRASH_CYCLES", "20"))
WORKERS = 8


def test_crash_cycles(tmp_path):
    assert CYCLES >= 1
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    chooser = random.Random(harness.SEED)
    references = {spec.session_id: harness.Reference(spec) for spec in harness.SPECS}
    log = harness.AckLog()
    next_sequence = {(w, spec.session_id): 1 for w in range(WORKERS) for spec in harness.SPECS}
    step_counts = {spec.session_id: 0 for spec in harness.SPECS}
    high_steps = dict(step_counts)
    churner = Churner()
    timings = []
    begin = time.monotonic()
    worst_error = 0.0
    server = None
    try:
        for cycle in range(CYCLES + 1):
            context = f"cycle {cycle}: "
            interval = chooser.choice(["0.25", "0.25", "3600"])
            server = harness.Fisherd(data_dir, logs, flags=[
                f"--snapshot-interval-seconds={interval}"])
            try:
                server.start()
            except harness.StartFailed as failure:
                pytest.fail(f"{context}restart after the SIGKILL failed: {failure}\nfiles: "
                            f"{sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob('*'))}")
            stub = server.stub()
            t_started = time.monotonic()
            if cycle == 0:
                harness.create_sessions(stub)
            listed = sorted(s.name for s in stub.ListSessions(pb.ListSessionsRequest(),
                                                              timeout=20).sessions)
            assert [n for n in listed if n != "sessions/churn"] == \
                ["sessions/dense", "sessions/diag"], (
                    f"{context}recovered sessions {listed}; stderr: {server.startup_line()}")

            # --- checks of what the previous cycle's kill left -----------------------
            states = {spec: harness.read_state(stub, spec) for spec in harness.SPECS}
            problems, error = harness.check_recovered(states, log, references, context)
            worst_error = max(worst_error, error)
            for spec, state in states.items():
                low = step_counts[spec.session_id]
                if cycle and state.step_count < low:
                    problems.append(f"{context}session {spec.session_id}: step_count "
                                    f"{state.step_count} < {low} (steps answered OK were "
                                    f"lost)")
                if cycle and state.step_count > high_steps[spec.session_id]:
                    problems.append(f"{context}session {spec.session_id}: step_count "
                                    f"{state.step_count} > {high_steps[spec.session_id]} "
                                    f"(more than were attempted)")
                step_counts[spec.session_id] = state.step_count
            problems += churner.check(stub, listed, context)
            assert not problems, "\n".join(problems) + \
                f"\nstart-up: {server.startup_line()}"
            t_checked = time.monotonic()
            if cycle == CYCLES:
                break

            # --- load, then SIGKILL at a random moment ---------------------------------
            for spec, state in states.items():
                for w in range(WORKERS):
                    next_sequence[(w, spec.session_id)] = \
                        state.worker_sequences.get(w, 0) + 1
            run = harness.LoadRun(server.address, range(WORKERS), harness.SPECS,
                                  next_sequence, log, stepper=True, step_seed=cycle)
            churn_thread = threading.Thread(target=churner.run, args=(server.address, run, log),
                                            daemon=True)
            run.start()
            churn_thread.start()
            pause = chooser.uniform(0.1, 1.5)
            time.sleep(pause)
            run.killed.set()
            status = server.kill()
            run.stop()
            churn_thread.join(60)
            assert not churn_thread.is_alive(), "the churn thread did not stop"
            assert status == -9, f"{context}fisherd exited with {status} before the kill"
            assert not log.problems, "\n".join(log.problems)
            high_steps = {sid: step_counts[sid] + run.steps_tried[sid]
                          for sid in step_counts}
            step_counts = {sid: step_counts[sid] + run.steps_ok[sid] for sid in step_counts}
            timings.append((cycle, interval, server.start_seconds, t_checked - t_started,
                            pause, sum(s.sample_count for s in states.values()),
                            dict(run.steps_ok), server.startup_line()))

        # --- the final resend of everything -------------------------------------------
        recovered = {(w, spec.session_id): states[spec].worker_sequences.get(w, 0)
                     for spec in harness.SPECS for w in range(WORKERS)}
        resend_problems = resend_everything(server.address, log, recovered)
        assert not resend_problems, "\n".join(resend_problems[:20])
        final = {(w, sid): log.sent.get((w, sid), 0) for (w, sid) in recovered}
        for phase in ("after the resend", "after drain and restart"):
            if phase == "after drain and restart":
                status = server.terminate()
                assert status == 0, f"drain (SIGTERM) exited with {status}:\n{server.stderr()}"
                server = harness.Fisherd(data_dir, logs, flags=[
                    "--snapshot-interval-seconds=3600"]).start()
                stub = server.stub()
            problems = []
            for spec in harness.SPECS:
                state = harness.read_state(stub, spec)
                want = {w: final[(w, spec.session_id)] for w in range(WORKERS)}
                if state.worker_sequences != {w: s for w, s in want.items() if s}:
                    problems.append(f"{phase}: session {spec.session_id}: worker sequences "
                                    f"{state.worker_sequences} != all sent {want}")
                expected = references[spec.session_id].expected(want)
                problems += harness.compare_state(state, expected, f"{phase}: ")
                worst_error = max(worst_error, harness.max_relative_error(state, expected))
            assert not problems, "\n".join(problems)
        assert server.terminate() == 0
    finally:
        if server is not None:
            server.cleanup()
    total = time.monotonic() - begin
    print(f"\ncrash_test: {CYCLES} kill/restart cycles in {total:.1f} s, "
          f"max relative F error {worst_error:.2e}")
    for cycle, interval, start, check, pause, samples, steps, line in timings:
        print(f"  cycle {cycle:2d}: snapshot every {interval:>5} s, start {start:.3f} s, "
              f"checks {check:.3f} s, killed after {pause:.2f} s, {samples} samples "
              f"recovered, steps OK {steps}; {line}")
    shutil.rmtree(data_dir)  # kept when the test fails
    sent = sum(log.sent.values())
    print(f"  batches sent (highest sequences summed): {sent}; session 'churn' created "
          f"{churner.k} times (each fed and deleted)")


@pytest.mark.parametrize("restart", ["sigkill", "drain"])
def test_recreated_session_survives_restart(tmp_path, restart):
    """Deterministic form of the churn: a session created, fed, deleted and created
    again under the same name, fed other batches (same worker, same sequences), then a
    restart after SIGKILL (replay of the log) or after a drain (the snapshot, then the
    log after it). Only the second incarnation may come back, with exactly its batches."""
    first = harness.Spec("again", "dense", 64, 50)
    second = harness.Spec("again", "dense", 64, 51)
    data_dir = tmp_path / "data"
    server = harness.Fisherd(data_dir, tmp_path / "logs",
                             flags=["--snapshot-interval-seconds=0"]).start()
    with harness.running(server):
        stub = server.stub()
        harness.create_sessions(stub, specs=[first])
        for sequence in range(1, 6):
            stub.AddScores(harness.batch_message(first, 0, sequence), timeout=20)
        stub.DeleteSession(pb.DeleteSessionRequest(name="sessions/again"), timeout=20)
        harness.create_sessions(stub, specs=[second])
        for sequence in range(1, 4):
            stub.AddScores(harness.batch_message(second, 0, sequence), timeout=20)
        status = server.kill() if restart == "sigkill" else server.terminate()
        assert status == (-9 if restart == "sigkill" else 0), server.stderr()
    again = harness.Fisherd(data_dir, tmp_path / "logs", flags=["--snapshot-interval-seconds=0"])
    with harness.running(again):
        try:
            again.start()
        except harness.StartFailed as failure:
            pytest.fail(f"create, delete, create again of one name, then {restart} and "
                        f"restart: {failure}\nfiles: "
                        f"{sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob('*'))}")
        state = harness.read_state(again.stub(), second)
        assert state.worker_sequences == {0: 3}, state.worker_sequences
        problems = harness.compare_state(state, harness.Reference(second).expected({0: 3}),
                                         f"after {restart}: ")
        assert not problems, "\n".join(problems)
        assert again.terminate() == 0
    shutil.rmtree(data_dir)


class Churner:
    """One session name, "churn", created, fed three batches by worker 0 and deleted,
    over and over: a new incarnation each time, its sequences numbered from 1 again and
    its content depending on the incarnation. After a kill: an incarnation whose
    deletion was acknowledged must stay deleted; one whose creation was acknowledged must
    exist unless its deletion was in flight; when present, the session must hold exactly
    batches 1..recovered of the newest incarnation (a batch of an older incarnation, same
    name, worker and sequence, would show in the numbers), with every acknowledged batch
    among them. The check then deletes it, so each cycle starts without it."""

    DIM = 16

    def __init__(self):
        self.k = 0                  # newest incarnation whose creation was attempted
        self.create_acked = False
        self.delete_attempted = False
        self.delete_acked = False
        self.acked = 0              # highest sequence acknowledged in incarnation k
        self.sent = 0

    def spec(self, k):
        return harness.Spec("churn", "diagonal", self.DIM, 1000 + k)

    def check(self, stub, listed, context):
        present = "sessions/churn" in listed
        where = (f"{context}session churn, incarnation {self.k} (creation acked "
                 f"{self.create_acked}, deletion attempted {self.delete_attempted}, acked "
                 f"{self.delete_acked}, batches acked 1..{self.acked}, sent 1..{self.sent})")
        problems = []
        if present and (self.k == 0 or self.delete_acked):
            problems.append(f"{where}: present after its deletion was acknowledged")
        if not present and self.create_acked and not self.delete_attempted:
            problems.append(f"{where}: missing though its creation was acknowledged")
        if present:
            state = harness.read_state(stub, self.spec(self.k))
            recovered = state.worker_sequences.get(0, 0)
            if set(state.worker_sequences) - {0} or not self.acked <= recovered <= self.sent:
                problems.append(f"{where}: recovered worker sequences "
                                f"{state.worker_sequences}")
            else:
                expected = harness.Reference(self.spec(self.k)).expected({0: recovered})
                problems += harness.compare_state(state, expected, f"{where}: ")
            stub.DeleteSession(pb.DeleteSessionRequest(name="sessions/churn"), timeout=20)
            self.delete_attempted = self.delete_acked = True
        return problems

    def run(self, address, run, log):
        channel = harness.channel(address)
        stub = pb_grpc.FisherServiceStub(channel)
        try:
            while not run.stop_event.is_set():
                self.k += 1
                self.create_acked = self.delete_attempted = self.delete_acked = False
                self.acked = self.sent = 0
                harness.create_sessions(stub, specs=[self.spec(self.k)])
                self.create_acked = True
                for sequence in range(1, 4):
                    self.sent = sequence
                    ack = stub.AddScores(harness.batch_message(self.spec(self.k), 0,
                                                               sequence), timeout=20)
                    if ack.sequence != sequence or ack.duplicate:
                        log.problem(f"churn incarnation {self.k}: batch {sequence} acked as "
                                    f"({ack.sequence}, duplicate={ack.duplicate})")
                    self.acked = sequence
                self.delete_attempted = True
                stub.DeleteSession(pb.DeleteSessionRequest(name="sessions/churn"),
                                   timeout=20)
                self.delete_acked = True
        except grpc.RpcError as error:
            run._error(f"churn incarnation {self.k}", error)
        finally:
            channel.close()


def resend_everything(address, log, recovered):
    """Every worker resends batches 1..highest ever sent, per session, from 8 threads.
    Batches at or below the recovered sequence must be acked duplicate=true with the
    recovered sequence; those above it applied as new."""
    problems = []
    lock = threading.Lock()
    channel = harness.channel(address)
    stub = pb_grpc.FisherServiceStub(channel)

    def worker(w):
        for spec in harness.SPECS:
            base = recovered[(w, spec.session_id)]
            top = log.sent.get((w, spec.session_id), 0)
            for first in range(1, top + 1, 64):
                last = min(top, first + 63)
                requests = (harness.batch_message(spec, w, s) for s in range(first, last + 1))
                sequence = first
                try:
                    for ack in stub.StreamScores(requests, timeout=60):
                        duplicate = sequence <= base
                        want = base if duplicate else sequence
                        if ack.duplicate != duplicate or ack.sequence != want:
                            with lock:
                                problems.append(
                                    f"resend: worker {w} session {spec.session_id} batch "
                                    f"{sequence}: ack (sequence {ack.sequence}, duplicate="
                                    f"{ack.duplicate}), expected (sequence {want}, "
                                    f"duplicate={duplicate}); recovered sequence {base}")
                        sequence += 1
                except grpc.RpcError as error:
                    with lock:
                        problems.append(f"resend: worker {w} session {spec.session_id}: "
                                        f"{error.code().name}: {error.details()}")
                    return
                if sequence != last + 1:
                    with lock:
                        problems.append(f"resend: worker {w} session {spec.session_id}: "
                                        f"{sequence - first} acks for {last - first + 1} "
                                        "batches")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()
    return problems


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
