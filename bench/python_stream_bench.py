#!/usr/bin/python3
"""Scores per second that the Python client (fisherd.Client.stream_scores) streams into a
dense session, beside the C++ load generator fisherd-bench on the same server.

    /usr/bin/python3 bench/python_stream_bench.py                  # dim 1024, batches of 256
    /usr/bin/python3 bench/python_stream_bench.py --target=HOST:PORT --seconds=5 --repeats=5

Without --target it starts build/server/fisherd on loopback. Each repeat streams one
NumPy array (sized from a short calibration to last about --seconds) through one
stream_scores call into a fresh session (dense, or --representation=diagonal, where the
server's work is small and the clients' own costs show): from float32 input, and from
float64 input (converted by the client). When build/bench/fisherd-bench exists it is run
with one worker, the same dim, batch, in-flight window and representation, and its
scores_per_second (the last line of its output, JSON) is the peer figure. Medians are printed and, as the last line,
one JSON object. A benchmark, not a test: it asserts nothing.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))

import fisherd  # noqa: E402

CPU_PER_SCORE = {}  # label -> this process's CPU seconds per score row, all threads


def start_server(binary):
    process = subprocess.Popen([binary, "--listen=127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        found = re.match(r"fisherd listening on (\S+)", line)
        if found:
            return process, found.group(1)
    raise SystemExit(f"{binary} did not start")


def python_rate(client, args, rows, label):
    """Streams `rows` through one stream_scores call into a new session; scores/s."""
    name = client.create_session(f"pybench-{os.getpid()}-{label}-{time.monotonic_ns()}",
                                 args.dim, representation=args.representation, damping=1e-3)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        ack = client.stream_scores(name, rows, worker_id="pybench",
                                   rows_per_batch=args.batch, max_in_flight=args.in_flight)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert ack.sample_count == len(rows), ack
        CPU_PER_SCORE.setdefault(label, []).append(cpu / len(rows))
        return len(rows) / seconds
    finally:
        client.delete_session(name)


def cpp_rate(binary, target, args):
    command = [binary, f"--target={target}", f"--dim={args.dim}", f"--batch={args.batch}",
               "--workers=1", f"--seconds={args.seconds}", f"--in-flight={args.in_flight}",
               f"--representation={args.representation}",
               "--delete-session"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["scores_per_second"], command


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="fisherd address; default: start --fisherd-bin")
    parser.add_argument("--fisherd-bin", default=str(REPO / "build" / "server" / "fisherd"))
    parser.add_argument("--cpp-bench", default=str(REPO / "build" / "bench" / "fisherd-bench"))
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256, help="rows per ScoreBatch")
    parser.add_argument("--representation", default="dense", choices=["dense", "diagonal"],
                        help="diagonal: the server's work is O(dim) a row, so the clients' "
                        "own costs show")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    server = None
    target = args.target
    if target is None:
        server, target = start_server(args.fisherd_bin)
    try:
        rng = np.random.default_rng(0)
        with fisherd.Client(target, wait_for_ready=True) as client:
            calibration = rng.standard_normal((20 * args.batch, args.dim), dtype=np.float32)
            rate = python_rate(client, args, calibration, "calibrate")
            rows = int(rate * args.seconds) // args.batch * args.batch or args.batch
            data32 = rng.standard_normal((rows, args.dim), dtype=np.float32)
            data64 = data32.astype(np.float64)
            results = {"float32": [], "float64": [], "cpp": []}
            cpp_command = None
            for repeat in range(args.repeats):
                results["float32"].append(python_rate(client, args, data32, "f32"))
                results["float64"].append(python_rate(client, args, data64, "f64"))
                if os.path.exists(args.cpp_bench):
                    value, cpp_command = cpp_rate(args.cpp_bench, target, args)
                    results["cpp"].append(value)
                print(f"repeat {repeat + 1}/{args.repeats}: " + "  ".join(
                    f"{k} {v[-1]:,.0f}/s" for k, v in results.items() if v), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)

    medians = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"\n{args.representation} session, dim {args.dim}, {args.batch} rows per batch, "
          f"{args.in_flight} in flight, {rows} rows per repeat, median of {args.repeats}:")
    print(f"  python client, float32 input  {medians['float32']:>10,.0f} scores/s  "
          f"{medians['float32'] * args.dim * 4 / 1e6:7.1f} MB/s")
    print(f"  python client, float64 input  {medians['float64']:>10,.0f} scores/s")
    cpu = {k: statistics.median(CPU_PER_SCORE[k]) for k in ("f32", "f64")}
    print(f"  python client CPU (all its threads): {cpu['f32'] * 1e6:.1f} us/score from "
          f"float32, {cpu['f64'] * 1e6:.1f} us/score from float64, i.e. one core could feed "
          f"{1 / cpu['f32']:,.0f} / {1 / cpu['f64']:,.0f} scores/s")
    summary = {"representation": args.representation, "dim": args.dim, "batch": args.batch,
               "in_flight": args.in_flight,
               "python_float32_scores_per_second": round(medians["float32"]),
               "python_float64_scores_per_second": round(medians["float64"]),
               "python_cpu_us_per_score_float32": round(cpu["f32"] * 1e6, 2)}
    if "cpp" in medians:
        ratio = medians["float32"] / medians["cpp"]
        print(f"  C++ fisherd-bench, 1 worker   {medians['cpp']:>10,.0f} scores/s  "
              f"(python/C++ = {ratio:.2f})")
        print(f"  peer command: {' '.join(cpp_command)}")
        summary.update(cpp_scores_per_second=round(medians["cpp"]),
                       python_over_cpp=round(ratio, 3))
    else:
        print(f"  (no {args.cpp_bench}: build it for the C++ figure)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
