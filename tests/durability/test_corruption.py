"""Torn tails and flipped bits, at the server level.

A clean run with known content (two workers, both sessions, batches sent one at a time
with unary AddScores so that every acknowledged batch is one log record, steps in
between), then SIGKILL (no drain, no snapshot: --snapshot-interval-seconds=0 and the
default 1 GiB log threshold). The log's records are found by their frame
(storage/record_format.h: 21-byte header u64 checksum, u32 length, u8 type, u64 LSN,
then the payload; zeros after the data), and the BATCH_APPLIED payloads decoded to know
which batch each record holds. Each case works on a fresh copy of that directory:

(a) the newest non-empty segment cut (truncated, or zeroed as preallocated space reads)
    inside its last record(s): the start succeeds, stderr reports the dropped torn tail
    (naming the segment and the record's offset), and the statistics equal the reference
    of exactly the batches in the records before the cut. Then more batches, SIGKILL and
    another restart: the log must go on cleanly after the dropped tail.
(b) one bit flipped inside an earlier record (payload, checksum, type, LSN, a low and a
    high bit of the length), or of the first record: the start fails (exit status != 0),
    stderr names the segment file and the byte offset, and every file of the directory
    is byte-identical afterwards.
(b') the last record of an older segment (the next segment starts after it, so it was
    acknowledged) zeroed from its middle, cut, or with a flipped bit: the start fails
    naming that segment and the offset, and nothing is changed (a torn tail is only acceptable at the
    end of the log).
(c) two lives each ending in a drain (SIGTERM: a snapshot round of both sessions), the
    second also snapshotting every 0.2 s under load so that it truncates the log:
    - control: after the second drain the log no longer starts at LSN 1, and a restart
      recovers every acknowledged batch;
    - after the first drain, the dense session's only snapshot with a flipped bit, or
      truncated: the start fails naming the snapshot file, the directory unchanged;
    - with the log truncated, every snapshot of the dense session damaged: the same;
    - with the log truncated and the previous snapshot kept as a fallback, the newest
      one damaged: the start falls back on the older one plus the log, and the
      statistics equal the reference of every acknowledged batch.
    - retention: three lives with one snapshot round each (their drains); afterwards
      the log must no longer start at LSN 1.
"""
import pathlib
import re
import shutil

import pytest

import harness

WORKERS = 2
ROUNDS = 12


def send_round(stub, sequences, rounds, rng, steps=True):
    """`rounds` rounds of one batch per (worker, session), unary, each acknowledged."""
    for _ in range(rounds):
        for spec in harness.SPECS:
            for w in range(WORKERS):
                key = (w, spec.session_id)
                sequences[key] = sequences.get(key, 0) + 1
                ack = stub.AddScores(harness.batch_message(spec, w, sequences[key]),
                                     timeout=20)
                assert ack.sequence == sequences[key] and not ack.duplicate, ack
            if steps:
                stub.NaturalGradientStep(harness.step_request(spec, rng), timeout=20)
    # End on batches, so that the last records of the log are batches.
    for spec in harness.SPECS:
        for w in range(WORKERS):
            key = (w, spec.session_id)
            sequences[key] += 1
            stub.AddScores(harness.batch_message(spec, w, sequences[key]), timeout=20)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A data directory after a clean run and a SIGKILL; (path, sequences acked)."""
    import numpy as np
    root = tmp_path_factory.mktemp("clean")
    data_dir = root / "data"
    server = harness.Fisherd(data_dir, root / "logs", flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        server.start()
        stub = server.stub()
        harness.create_sessions(stub)
        sequences = {}
        send_round(stub, sequences, ROUNDS, np.random.default_rng(1))
        assert server.kill() == -9
    assert not harness.snapshots(data_dir), "a snapshot was written though none was due"
    yield data_dir, sequences
    shutil.rmtree(root, ignore_errors=True)


def sparse_copy(source, target):
    """A byte-identical copy that leaves the zero tail of a preallocated segment as a
    hole (64 MiB per segment would otherwise be written for every case)."""
    data = pathlib.Path(source).read_bytes()
    end = len(data.rstrip(b"\0"))
    with open(target, "wb") as f:
        f.write(data[:end])
        f.truncate(len(data))
    shutil.copymode(source, target)


def sparse_copytree(source, target):
    shutil.copytree(source, target, copy_function=sparse_copy)


def copy_of(source, tmp_path, name="data"):
    target = tmp_path / name
    sparse_copytree(source, target)
    return target


def newest_segment_frames(data_dir):
    frames = harness.log_frames(data_dir)
    nonempty = [path for path, fs in frames.items() if fs]
    assert nonempty, f"no record in {harness.segments(data_dir)}"
    return nonempty[-1], frames[nonempty[-1]]


def sequences_in(frames):
    """(worker, session_id) -> highest sequence among the BATCH_APPLIED frames, checking
    that each worker's sequences run 1, 2, 3, ... in log order."""
    seen = {}
    for frame in frames:
        if frame.type != 3:
            continue
        batch = harness.batch_of_frame(frame)
        worker = int(batch.worker_id[1:])
        key = (worker, batch.session.split("/", 1)[1])
        assert batch.sequence == seen.get(key, 0) + 1, (
            f"{frame.path.name} offset {frame.offset}: batch {batch.sequence} of {key} "
            f"follows {seen.get(key, 0)}")
        seen[key] = batch.sequence
    return seen


def check_state(stub, expected_sequences, context):
    problems = []
    for spec in harness.SPECS:
        state = harness.read_state(stub, spec)
        want = {w: s for (w, sid), s in expected_sequences.items()
                if sid == spec.session_id and s}
        if state.worker_sequences != want:
            problems.append(f"{context}session {spec.session_id}: recovered worker "
                            f"sequences {state.worker_sequences}, expected {want}")
        expected = harness.Reference(spec).expected(want)
        problems += harness.compare_state(state, expected, context)
    assert not problems, "\n".join(problems)


# --- (a) torn tails ------------------------------------------------------------------

TORN_CASES = [
    # (name, how, where): where(last, previous) -> offset of the cut
    ("last-header-1", "truncate", lambda last, prev: last.offset + 1),
    ("last-header-9", "zero", lambda last, prev: last.offset + 9),
    ("last-header-only", "truncate", lambda last, prev: last.offset + harness.HEADER.size),
    ("last-payload-half", "zero", lambda last, prev: last.payload_offset + last.length // 2),
    ("last-payload-half-truncated", "truncate",
     lambda last, prev: last.payload_offset + last.length // 2),
    ("last-minus-1", "truncate", lambda last, prev: last.end - 1),
    ("last-minus-1-zeroed", "zero", lambda last, prev: last.end - 1),
    ("previous-payload-half", "zero", lambda last, prev: prev.payload_offset + prev.length // 2),
]


@pytest.mark.parametrize("name,how,where", TORN_CASES, ids=[c[0] for c in TORN_CASES])
def test_torn_tail(clean_run, tmp_path, name, how, where):
    source, acked = clean_run
    data_dir = copy_of(source, tmp_path)
    segment, frames = newest_segment_frames(data_dir)
    assert len(frames) >= 3 and frames[-1].type == 3 and frames[-2].type == 3
    cut = where(frames[-1], frames[-2])
    end = frames[-1].end
    with open(segment, "r+b") as f:
        if how == "truncate":
            f.truncate(cut)
        else:
            f.seek(cut)
            f.write(bytes(end - cut))
    kept = [frame for frame in frames if frame.end <= cut]
    torn = next(frame for frame in frames if frame.end > cut)
    earlier = [fs for path, fs in harness.log_frames(source).items()
               if path.name < segment.name]
    expected = sequences_in([f for fs in earlier for f in fs] + kept)
    assert sum(expected.values()) < sum(acked.values())

    server = harness.Fisherd(data_dir, tmp_path / "logs",
                             flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"{name}: {how} {segment.name} at byte {cut} (inside the record at "
                        f"{torn.offset}): the start must drop the torn tail, but {failure}")
        # Wait for the whole recovery line: std::cerr is unbuffered, so the line arrives in
        # pieces, and the data directory's own path contains "torn" (the test's name).
        stderr = server.stderr_matching(r"durable sessions in [^\n]*\n")
        assert re.search(r"dropped a torn record", stderr, re.I), (
            f"{name}: stderr does not report a dropped torn tail:\n{stderr}")
        assert segment.name in stderr and str(torn.offset) in stderr, (
            f"{name}: the torn-tail report should name {segment.name} and offset "
            f"{torn.offset}:\n{stderr}")
        stub = server.stub()
        check_state(stub, expected, f"{name} ({how} at {cut}): ")

        # The log must continue cleanly after the dropped tail.
        import numpy as np
        sequences = dict(expected)
        for key in acked:
            sequences.setdefault(key, 0)
        send_round(stub, sequences, 1, np.random.default_rng(2))
        assert server.kill() == -9

    again = harness.Fisherd(data_dir, tmp_path / "logs", flags=["--snapshot-interval-seconds=0"])
    with harness.running(again):
        try:
            again.start()
        except harness.StartFailed as failure:
            pytest.fail(f"{name}: after recovering from the torn tail, more batches and a "
                        f"SIGKILL, the next start failed: {failure}")
        stub = again.stub()
        check_state(stub, sequences, f"{name}, after more batches and another kill: ")
        assert again.terminate() == 0
    shutil.rmtree(data_dir)


# --- (b) flipped bits in earlier records ----------------------------------------------

FLIP_CASES = [
    # (name, frame index chooser, byte offset within the record, bit)
    ("payload", lambda n: n // 2, lambda f: harness.HEADER.size + f.length // 2, 3),
    ("checksum", lambda n: n // 2, lambda f: 2, 0),
    ("length-low-bit", lambda n: n // 2, lambda f: 8, 4),
    ("length-high-bit", lambda n: n // 2, lambda f: 11, 7),
    ("type", lambda n: n // 2, lambda f: 12, 1),
    ("lsn", lambda n: n // 2, lambda f: 13, 0),
    ("first-record-payload", lambda n: 0, lambda f: harness.HEADER.size + f.length // 2, 0),
    ("second-to-last-payload", lambda n: n - 2,
     lambda f: harness.HEADER.size + f.length // 2, 6),
]


@pytest.mark.parametrize("name,choose,within,bit", FLIP_CASES, ids=[c[0] for c in FLIP_CASES])
def test_flipped_bit(clean_run, tmp_path, name, choose, within, bit):
    source, _ = clean_run
    data_dir = copy_of(source, tmp_path)
    segment, frames = newest_segment_frames(data_dir)
    frame = frames[choose(len(frames))]
    assert frame is not frames[-1]
    position = frame.offset + within(frame)
    with open(segment, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ (1 << bit)]))
    before = harness.tree_digest(data_dir)
    status, stderr = harness.Fisherd(data_dir, tmp_path / "logs").run_to_exit()
    after = harness.tree_digest(data_dir)
    context = (f"{name}: bit {bit} of byte {position} of {segment.name} (record of type "
               f"{frame.type} at {frame.offset}, LSN {frame.lsn}, {len(frames)} records)")
    assert status != 0, f"{context}: the start did not fail (status {status})"
    assert status > 0, f"{context}: fisherd died of signal {-status}:\n{stderr}"
    assert segment.name in stderr, f"{context}: stderr does not name the segment:\n{stderr}"
    numbers = set(re.findall(r"\d+", stderr))
    assert str(frame.offset) in numbers or str(position) in numbers, (
        f"{context}: stderr names neither the record's offset {frame.offset} nor the "
        f"byte's {position}:\n{stderr}")
    changes = harness.diff_digests(before, after)
    assert not changes, f"{context}: the failed start modified the directory: {changes}"
    shutil.rmtree(data_dir)


# --- damage at the end of an older segment -------------------------------------------

@pytest.fixture(scope="module")
def two_lives(tmp_path_factory):
    """Two lives ended by SIGKILL: the first life's records in one segment, the second's
    in the next (a restart opens a new segment)."""
    import numpy as np
    root = tmp_path_factory.mktemp("two-lives")
    data_dir = root / "data"
    sequences = {}
    for life in range(2):
        server = harness.Fisherd(data_dir, root / "logs", flags=["--snapshot-interval-seconds=0"])
        with harness.running(server):
            server.start()
            stub = server.stub()
            if life == 0:
                harness.create_sessions(stub)
            send_round(stub, sequences, 3, np.random.default_rng(20 + life))
            assert server.kill() == -9
    yield data_dir, sequences
    shutil.rmtree(root, ignore_errors=True)


OLDER_SEGMENT_CASES = ["zero-last-record-half", "truncate-in-last-record", "flip-last-record"]


@pytest.mark.parametrize("how", OLDER_SEGMENT_CASES)
def test_older_segment_damaged_at_its_end(two_lives, tmp_path, how):
    """The last record of a segment that is not the log's last was acknowledged (the
    next segment starts after it), so damage there is corruption, not a torn tail: the
    start fails naming the damaged segment and the offset (the record's or the damaged
    byte's), and nothing is changed."""
    source, _ = two_lives
    data_dir = copy_of(source, tmp_path)
    frames = harness.log_frames(data_dir)
    nonempty = [path for path, fs in frames.items() if fs]
    assert len(nonempty) >= 2, f"expected two non-empty segments: {list(frames)}"
    older = nonempty[-2]
    last = frames[older][-1]
    position = last.payload_offset + last.length // 2
    with open(older, "r+b") as f:
        if how == "zero-last-record-half":
            f.seek(position)
            f.write(bytes(last.end - position))
        elif how == "truncate-in-last-record":
            f.truncate(position)
        else:
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ 0x04]))
    expect_refused(data_dir, tmp_path, f"{how} of {older.name} (record at {last.offset}, LSN "
                   f"{last.lsn}; the next segment starts at LSN {frames[nonempty[-1]][0].lsn})",
                   [older.name], offsets=(last.offset, position))
    shutil.rmtree(data_dir)


# --- (c) snapshots ---------------------------------------------------------------------

def drained_run(root):
    """Two lives on one directory, each ending in a drain (SIGTERM: a snapshot round).
    The first snapshots only on drain; the second every 0.2 s while batches arrive in
    three spaced bursts, so that it makes several rounds and, by "a round lets the log
    before the previous round go", truncates the log. Returns [(copy of the directory
    after drain k, sequences acked by then)]."""
    import time
    import numpy as np
    data_dir = root / "data"
    sequences = {}
    copies = []
    for life, interval in enumerate(["0", "0.2"]):
        server = harness.Fisherd(data_dir, root / "logs",
                                 flags=[f"--snapshot-interval-seconds={interval}"])
        with harness.running(server):
            try:
                server.start()
            except harness.StartFailed as failure:
                pytest.fail(f"restart after a clean drain (SIGTERM, exit 0) failed: "
                            f"{failure}\nfiles: "
                            f"{sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob('*'))}")
            stub = server.stub()
            if life == 0:
                harness.create_sessions(stub)
                send_round(stub, sequences, 6, np.random.default_rng(3))
            else:
                check_state(stub, sequences, "after the first drain and a restart: ")
                for burst in range(3):
                    send_round(stub, sequences, 1, np.random.default_rng(4 + burst))
                    time.sleep(0.6)
            assert server.terminate() == 0, server.stderr()
        copy = root / f"after-drain-{life + 1}"
        sparse_copytree(data_dir, copy)
        copies.append((copy, dict(sequences)))
    return copies


@pytest.fixture(scope="module")
def drained(tmp_path_factory):
    root = tmp_path_factory.mktemp("drained")
    result = drained_run(root)
    yield result
    shutil.rmtree(root, ignore_errors=True)


def dense_snapshots(paths):
    out = [p for p in paths if p.name.startswith("dense.")]
    for p in out:
        assert re.fullmatch(r"dense\.\d{20}\.snap", p.name), p.name
    return sorted(out)


def corrupt_snapshot(snap, how):
    """Flips a bit in the middle of the largest record (a state chunk: M's values), or
    cuts the file inside its last record; returns the byte offset."""
    frames = harness.read_frames(snap)
    assert frames, f"{snap.name}: no record"
    if how == "flip":
        chunk = max(frames, key=lambda f: f.length)
        position = chunk.payload_offset + chunk.length // 2
        data = bytearray(snap.read_bytes())
        data[position] ^= 0x10
        snap.write_bytes(bytes(data))
    else:
        position = frames[-1].offset + 5
        with open(snap, "r+b") as f:
            f.truncate(position)
    return position


def expect_refused(data_dir, tmp_path, context, must_name, offsets=()):
    """The start must fail (status > 0) with stderr naming one of the files `must_name`
    (and, when given, one of the byte offsets), and leave the directory unchanged."""
    before = harness.tree_digest(data_dir)
    status, stderr = harness.Fisherd(data_dir, tmp_path / "logs").run_to_exit()
    after = harness.tree_digest(data_dir)
    assert status > 0, f"{context}: start status {status}, expected a failure:\n{stderr}"
    assert any(name in stderr for name in must_name), (
        f"{context}: stderr names none of {must_name}:\n{stderr}")
    if offsets:
        numbers = set(re.findall(r"\d+", stderr))
        assert any(str(offset) in numbers for offset in offsets), (
            f"{context}: stderr names none of the offsets {list(offsets)}:\n{stderr}")
    changes = harness.diff_digests(before, after)
    assert not changes, f"{context}: the failed start modified the directory: {changes}"
    print(f"\n{context}: {stderr.strip().splitlines()[-1]}")


def truncated_copy(drained, tmp_path):
    """The directory after the second drain, checked to have a truncated log."""
    source, sequences = drained[1]
    data_dir = copy_of(source, tmp_path)
    names = [p.name for p in harness.segments(data_dir)]
    if min(int(p.stem) for p in harness.segments(data_dir)) == 1:
        pytest.fail(f"the log still starts at LSN 1 after a life with several snapshot "
                    f"rounds (every 0.2 s over 1.8 s of batches) and a drain: {names}, "
                    f"snapshots {[p.name for p in harness.snapshots(data_dir)]}")
    return data_dir, sequences


def test_restart_after_log_truncation(drained, tmp_path):
    """No corruption: the control for the cases below. The restart after a life that
    truncated the log must recover everything."""
    data_dir, sequences = truncated_copy(drained, tmp_path)
    names = [p.name for p in harness.segments(data_dir)]
    server = harness.Fisherd(data_dir, tmp_path / "logs", flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"restart after a clean drain with the log truncated to {names} and "
                        f"snapshots {[p.name for p in harness.snapshots(data_dir)]}: {failure}")
        check_state(server.stub(), sequences, "after the log was truncated: ")
        assert server.terminate() == 0
    shutil.rmtree(data_dir)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_only_snapshot_corrupt(drained, tmp_path, how):
    """After the first drain: the session's only snapshot (the log still holds its
    creation, but the server must not guess past a damaged snapshot)."""
    data_dir = copy_of(drained[0][0], tmp_path)
    snaps = dense_snapshots(harness.snapshots(data_dir))
    assert len(snaps) == 1, f"after one drain: dense snapshots {snaps}"
    position = corrupt_snapshot(snaps[0], how)
    expect_refused(data_dir, tmp_path, f"{how} of {snaps[0].name} at byte {position} (the "
                   "session's only snapshot)", [snaps[0].name])
    shutil.rmtree(data_dir)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_all_snapshots_corrupt_log_truncated(drained, tmp_path, how):
    """Log truncated: every snapshot of the dense session damaged, so no valid one is
    left and the log no longer holds what they replaced."""
    data_dir, _ = truncated_copy(drained, tmp_path)
    snaps = dense_snapshots(harness.snapshots(data_dir))
    assert snaps, "no dense snapshot"
    where = {snap.name: corrupt_snapshot(snap, how) for snap in snaps}
    expect_refused(data_dir, tmp_path, f"{how} of every dense snapshot {where} (log "
                   "truncated)", [snap.name for snap in snaps])
    shutil.rmtree(data_dir)


def test_newest_snapshot_corrupt_older_used(drained, tmp_path):
    data_dir, sequences = truncated_copy(drained, tmp_path)
    snaps = dense_snapshots(harness.snapshots(data_dir))
    if len(snaps) < 2:
        pytest.skip(f"the server kept only {[p.name for p in snaps]}: no older snapshot to "
                    "fall back on")
    newest = snaps[-1]
    corrupt_snapshot(newest, "flip")
    server = harness.Fisherd(data_dir, tmp_path / "logs", flags=["--snapshot-interval-seconds=0"])
    with harness.running(server):
        try:
            server.start()
        except harness.StartFailed as failure:
            pytest.fail(f"{newest.name} corrupt with the older {snaps[-2].name} present: the "
                        f"start must fall back on the older one: {failure}")
        check_state(server.stub(), sequences, f"newest snapshot {newest.name} corrupt: ")
        print(f"\nfallback on {snaps[-2].name}: {server.startup_line()}")
        assert server.terminate() == 0
    shutil.rmtree(data_dir)


def test_log_truncated_across_restarts(tmp_path):
    """Retention across restarts: three lives, each with one snapshot round (its drain)
    and batches before it. By the design's rule a round lets the log before the previous
    round go, and the previous round is on disk (the snapshots), so after the third drain
    the log must no longer start at LSN 1, or a server restarted more often than it
    snapshots twice (every restart also opens a new 64 MiB segment) grows its log
    without bound."""
    import numpy as np
    data_dir = tmp_path / "data"
    sequences = {}
    for life in range(3):
        server = harness.Fisherd(data_dir, tmp_path / "logs",
                                 flags=["--snapshot-interval-seconds=0"])
        with harness.running(server):
            server.start()
            stub = server.stub()
            if life == 0:
                harness.create_sessions(stub)
            send_round(stub, sequences, 2, np.random.default_rng(10 + life))
            assert server.terminate() == 0
    names = [p.name for p in harness.segments(data_dir)]
    snaps = [p.name for p in harness.snapshots(data_dir)]
    shutil.rmtree(data_dir)
    assert not names[0].startswith("00000000000000000001."), (
        f"after three lives each ending in a snapshot round, the log still starts at LSN "
        f"1: segments {names} ({len(names)} x 64 MiB preallocated), snapshots {snaps}")


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
