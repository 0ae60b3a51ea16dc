"""The data directory's environment: a directory fisherd may not write, and a full disk.

read-only: fisherd runs as an unprivileged user (setpriv --reuid=65534 as root, since
root ignores permission bits; plain chmod otherwise) on (1) an existing empty directory
it may not write, (2) a missing directory whose parent it may not write, (3) a populated
data directory (a previous run's log and snapshots) it may read but not write. Each start
must fail (exit status > 0) with a message naming the directory, and (3) must leave the
directory byte-identical.

full disk (needs mount -t tmpfs; skipped where that is not permitted):
(1) a 4 MiB tmpfs, smaller than one preallocated log segment (64 MiB): fisherd must not
    crash; it either serves or refuses to start with a message naming the directory.
(2) a tmpfs of 2 segments plus a little, with a 66 MiB filler file beside the data
    directory, so that the first segment fits and the second does not: one worker
    streams 4096-wide batches until the stream fails with RESOURCE_EXHAUSTED. Then: the
    server is still up; that batch was never acknowledged and was not applied (recovered
    sequence = last ack, statistics equal the reference of exactly the acknowledged
    batches); resending it fails the same way; a step answers (steps may use the log's
    control reserve) or fails with a clear status; deleting the filler lets the same
    batch through as new. SIGKILL and a restart on the again nearly full disk (a restart
    opens a new 64 MiB segment): it serves, or fails naming the directory and leaving it
    byte-identical. Finally the tmpfs grown (remount) and a restart: every acknowledged
    batch is there, exactly once.
"""
import os
import pathlib
import shutil
import subprocess
import tempfile

import grpc
import pytest

import harness

MIB = 1 << 20
SEGMENT_BYTES = 64 * MIB  # server/durable_store.h DurabilityOptions::segment_bytes
NOBODY = 65534


# --- read-only --------------------------------------------------------------------------

def unprivileged_wrapper():
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "nobody", "--"]
    pytest.skip("running as root (permission bits do not stop root) and neither setpriv "
                "nor runuser is installed to drop privileges")


def test_unwritable_data_dir(tmp_path):
    wrapper = unprivileged_wrapper()
    # Outside pytest's 0700 tmp_path, so that the unprivileged user can reach it.
    base = pathlib.Path(tempfile.mkdtemp(prefix="fisherd-readonly-"))
    readonly_dir, readonly_file = (0o755, 0o644) if wrapper else (0o555, 0o444)
    try:
        os.chmod(base, 0o755)
        empty = base / "empty"
        empty.mkdir()
        parent = base / "parent"
        parent.mkdir()
        missing = parent / "data"

        # A populated directory, written by this (privileged) user.
        populated = base / "populated"
        writer = harness.Fisherd(populated, tmp_path / "logs",
                                 flags=["--snapshot-interval-seconds=0"])
        with harness.running(writer):
            writer.start()
            stub = writer.stub()
            harness.create_sessions(stub)
            for sequence in range(1, 6):
                for spec in harness.SPECS:
                    stub.AddScores(harness.batch_message(spec, 0, sequence), timeout=20)
            assert writer.terminate() == 0
        for directory in (empty, parent):
            os.chmod(directory, readonly_dir)
        for root, dirs, files in os.walk(populated):
            os.chmod(root, readonly_dir)
            for name in files:
                os.chmod(os.path.join(root, name), readonly_file)

        problems = []
        reports = []
        for label, data_dir in (("existing empty directory", empty),
                                ("missing directory under an unwritable parent", missing),
                                ("populated data directory", populated)):
            before = harness.tree_digest(data_dir) if data_dir.exists() else None
            server = harness.Fisherd(data_dir, tmp_path / "logs", wrapper=wrapper)
            status, stderr = server.run_to_exit()
            last = stderr.strip().splitlines()[-1] if stderr.strip() else "(no stderr)"
            reports.append(f"{label}: status {status}: {last}")
            if status <= 0:
                problems.append(f"{label} ({data_dir}): start status {status}, expected a "
                                f"failure (exit status > 0); stderr:\n{stderr}")
                continue
            if str(data_dir) not in stderr:
                problems.append(f"{label}: stderr does not name {data_dir}:\n{stderr}")
            if before is not None:
                changes = harness.diff_digests(before, harness.tree_digest(data_dir))
                if changes:
                    problems.append(f"{label}: the failed start modified the directory: "
                                    f"{changes}")
        print("\n" + "\n".join(reports))
        assert not problems, "\n".join(problems)
    finally:
        for root, dirs, files in os.walk(base):
            os.chmod(root, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- full disk ---------------------------------------------------------------------------

BIG = harness.Spec("big", "diagonal", 4096, 2)


def mount_tmpfs(path, size):
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {result.stderr.strip()}")


def umount(path):
    subprocess.run(["umount", str(path)], check=False, capture_output=True)


def test_start_on_tiny_disk(tmp_path):
    mount_point = pathlib.Path(tempfile.mkdtemp(prefix="fisherd-tiny-"))
    mount_tmpfs(mount_point, "4m")
    server = None
    try:
        data_dir = mount_point / "data"
        server = harness.Fisherd(data_dir, tmp_path / "logs")
        try:
            server.start()
            outcome = f"serves on a 4 MiB disk: {server.startup_line()}"
            assert server.terminate() == 0
        except harness.StartFailed as failure:
            assert failure.returncode > 0, (f"fisherd died of signal {-failure.returncode} "
                                            f"on a 4 MiB disk:\n{failure.stderr}")
            assert str(data_dir) in failure.stderr, (
                f"the refusal to start on a 4 MiB disk does not name {data_dir}:\n"
                f"{failure.stderr}")
            outcome = (f"refuses to start on a 4 MiB disk (status {failure.returncode}): "
                       f"{failure.stderr.strip().splitlines()[-1]}")
        print(f"\n{outcome}")
    finally:
        if server is not None:
            server.cleanup()
        umount(mount_point)
        shutil.rmtree(mount_point, ignore_errors=True)


def test_full_disk(tmp_path):
    mount_point = pathlib.Path(tempfile.mkdtemp(prefix="fisherd-full-"))
    mount_tmpfs(mount_point, f"{2 * SEGMENT_BYTES // MIB + 4}m")
    servers = []
    try:
        filler = mount_point / "filler"
        with open(filler, "wb") as f:
            f.write(bytes(66 * MIB))
        data_dir = mount_point / "data"
        reference = harness.Reference(BIG)
        server = harness.Fisherd(data_dir, tmp_path / "logs",
                                 flags=["--snapshot-interval-seconds=0"])
        servers.append(server)
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"start with room for one log segment failed: {failure}")
        stub = server.stub()
        harness.create_sessions(stub, specs=[BIG])

        acked = 0
        failure = None

        def requests():
            for sequence in range(1, 4000):  # ~160 MB: more than the disk holds
                yield harness.batch_message(BIG, 0, sequence)
        try:
            for ack in stub.StreamScores(requests(), timeout=120):
                assert ack.sequence == acked + 1 and not ack.duplicate, ack
                acked = ack.sequence
        except grpc.RpcError as error:
            failure = error
        assert failure is not None, (f"{acked} batches (~{acked * 40 // 1024} MiB) were "
                                     "acknowledged without RESOURCE_EXHAUSTED on a full disk")
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"the stream failed after {acked} acks with {failure.code().name}: "
            f"{failure.details()}")
        assert server.alive(), f"fisherd exited after the full disk:\n{server.stderr()}"
        message = failure.details()

        def check(sequence, context):
            state = harness.read_state(stub, BIG)
            problems = []
            if state.worker_sequences != ({0: sequence} if sequence else {}):
                problems.append(f"{context}: recovered worker sequences "
                                f"{state.worker_sequences}, expected {{0: {sequence}}}")
            problems += harness.compare_state(state, reference.expected({0: sequence}),
                                              f"{context}: ")
            assert not problems, "\n".join(problems)
            return state

        state = check(acked, f"after RESOURCE_EXHAUSTED at batch {acked + 1}")
        try:
            ack = stub.AddScores(harness.batch_message(BIG, 0, acked + 1), timeout=20)
            pytest.fail(f"batch {acked + 1} resent on the full disk was acknowledged: {ack}")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"batch {acked + 1} resent on the full disk: {error.code().name}: "
                f"{error.details()}")
        check(acked, "after the resend on the full disk")

        import numpy as np
        try:
            stub.NaturalGradientStep(harness.step_request(BIG, np.random.default_rng(5)),
                                     timeout=20)
            step = "answered"
            after = harness.read_state(stub, BIG)
            assert after.step_count == state.step_count + 1, (
                f"a step answered on the full disk, but step_count {state.step_count} -> "
                f"{after.step_count}")
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.FAILED_PRECONDITION,
                                    grpc.StatusCode.UNAVAILABLE) and error.details(), (
                f"a step on the full disk: {error.code().name}: {error.details()!r}")
            step = f"failed: {error.code().name}: {error.details()}"
        assert server.alive(), "fisherd exited after a step on the full disk"
        check(acked, "after the step on the full disk")

        filler.unlink()
        ack = stub.AddScores(harness.batch_message(BIG, 0, acked + 1), timeout=20)
        assert ack.sequence == acked + 1 and not ack.duplicate, (
            f"batch {acked + 1} after freeing space: ack {ack}")
        for sequence in range(acked + 2, acked + 6):
            stub.AddScores(harness.batch_message(BIG, 0, sequence), timeout=20)
        final = acked + 5
        check(final, "after freeing space")
        assert server.kill() == -9

        # The disk is nearly full again (two segments); a restart needs a new segment.
        before = harness.tree_digest(data_dir)
        full = harness.Fisherd(data_dir, tmp_path / "logs",
                               flags=["--snapshot-interval-seconds=0"])
        servers.append(full)
        try:
            full.start()
            stub = full.stub()
            check(final, "after SIGKILL and a restart on the full disk")
            restart = f"serves again on the full disk: {full.startup_line()}"
            assert full.kill() == -9
        except harness.StartFailed as refused:
            assert refused.returncode > 0 and str(data_dir) in refused.stderr, (
                f"a restart on the full disk: status {refused.returncode}, stderr:\n"
                f"{refused.stderr}")
            changes = harness.diff_digests(before, harness.tree_digest(data_dir))
            assert not changes, (f"the failed restart on the full disk modified the "
                                 f"directory: {changes}")
            restart = (f"a restart on the full disk fails (status {refused.returncode}), "
                       f"directory unchanged: {refused.stderr.strip().splitlines()[-1]}")

        subprocess.run(["mount", "-o", f"remount,size={4 * SEGMENT_BYTES // MIB}m",
                        str(mount_point)], check=True)
        again = harness.Fisherd(data_dir, tmp_path / "logs",
                                flags=["--snapshot-interval-seconds=0"])
        servers.append(again)
        again.start()
        stub = again.stub()
        check(final, "after SIGKILL and restart")
        assert again.terminate() == 0
        print(f"\nfull disk: {acked} batches acknowledged before RESOURCE_EXHAUSTED "
              f"({message}); the step {step}; after freeing space batches "
              f"{acked + 1}..{final} applied; {restart}; all recovered after SIGKILL and "
              "growing the disk")
    finally:
        for server in servers:
            server.cleanup()
        umount(mount_point)
        shutil.rmtree(mount_point, ignore_errors=True)


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
