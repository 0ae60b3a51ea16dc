#!/usr/bin/env python3
"""Ingest through HAProxy against ingest straight into the same replica, in the same run.

Starts one fisherd on loopback and HAProxy in front of it, configured by
docker/haproxy/haproxy.cfg as `docker/haproxy/loopback-cluster.sh config LISTEN REPLICA`
renders it with that one replica, then runs fisherd-bench's ingest mode (which sends
x-fisherd-session, the header HAProxy hashes) against the proxy and against the replica
directly, alternating: every round runs each target once, in an order rotated from round
to round, so load from other work on the machine falls on all of them.

  /usr/bin/python3 bench/cluster_bench.py [--build-dir=build] [--rounds=5] [--seconds=3]
      [--variants=shipped,tcp] [--shapes=NAME,...] [--quick] [--out=DIR]

Targets ("variants"; `direct` is always measured):
  shipped      haproxy.cfg as shipped (rendered by loopback-cluster.sh config)
  tcp          HAProxy in "mode tcp", relaying the bytes without parsing HTTP/2: the cost of
               one proxy hop on its own (it cannot route by session)
  tcp-splice   the same with "option splice-auto" (the kernel moves the bytes) and
               tune.bufsize 262144
  defaults     haproxy.cfg without its tune.* lines (HAProxy's own buffer and window sizes)
  nbthread1    haproxy.cfg with "nbthread 1" (HAProxy defaults to one thread per CPU)
  window4m     tune.h2.initial-window-size 4 MiB instead of 1 MiB
  bufsize1m    tune.bufsize 1 MiB instead of 256 KiB
  frame16k     tune.h2.max-frame-size 16384 (otherwise HAProxy announces frames as large
               as tune.bufsize)
  reuse-never  "http-reuse never" in the backend
  all          every one of the above

Shapes (fisherd-bench arguments): dense1024x256 (1 MiB messages; the server's dsyrk
dominates), dense1024x256w4 (the same from 4 workers on one channel), dense1024x8 (32 KiB
messages: per-message costs), diag4096x64 (1 MiB messages into a diagonal session, whose
server work is one pass: the wire dominates). Also, when iperf3 is on PATH, single-stream
loopback TCP (iperf3 -c 127.0.0.1) once per round: the raw transport.

Per run it also reads the CPU seconds the HAProxy process and fisherd (all their threads)
spent, from /proc/PID/stat, and the client's (getrusage of the finished child), and
divides by the payload bytes the run moved (rate x (seconds + the 0.5 s warm-up)): CPU
seconds per GB of scores, HAProxy's and all three together. On a machine whose cores are
all busy these, not the wall-clock rates, say what a proxy costs.

Prints per shape and target the median scores/s and payload MB/s, the median over rounds
of the per-round ratio target / direct (target >= 0.85x for the shipped proxy), and
HAProxy's CPU seconds per GB. Raw JSON lines go to DIR/cluster_ingest.jsonl; the last line
printed is one JSON object with the medians.
"""
import argparse
import json
import os
import pathlib
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "docker" / "haproxy" / "loopback-cluster.sh"
TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_SECONDS = 0.5

SHAPES = {
    "dense1024x256": ["--representation=dense", "--dim=1024", "--batch=256", "--workers=1"],
    "dense1024x256w4": ["--representation=dense", "--dim=1024", "--batch=256", "--workers=4"],
    "dense1024x8": ["--representation=dense", "--dim=1024", "--batch=8", "--workers=1"],
    "diag4096x64": ["--representation=diagonal", "--dim=4096", "--batch=64", "--workers=1"],
    # Not in the default set: the small batches with a deeper window of unacknowledged
    # batches (fisherd-bench's default is 8), to tell latency from per-byte cost.
    "dense1024x8i64": ["--representation=dense", "--dim=1024", "--batch=8", "--workers=1",
                       "--in-flight=64"],
}
DEFAULT_SHAPES = ["dense1024x256", "dense1024x256w4", "dense1024x8", "diag4096x64"]
QUICK_SHAPES = {
    "dense128x64": ["--representation=dense", "--dim=128", "--batch=64", "--workers=1"],
    "diag512x16": ["--representation=diagonal", "--dim=512", "--batch=16", "--workers=2"],
}
VARIANTS = ["shipped", "tcp", "tcp-splice", "defaults", "nbthread1", "window4m", "bufsize1m",
            "frame16k", "reuse-never"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def shipped_config(listen, replica):
    return subprocess.run(["bash", str(CLUSTER_SCRIPT), "config", listen, replica], check=True,
                          capture_output=True, text=True).stdout


def variant_config(variant, listen, replica):
    """The HAProxy configuration of one variant, as text."""
    if variant in ("tcp", "tcp-splice"):
        splice = variant == "tcp-splice"
        return "\n".join([
            "global", "    maxconn 4096"] + (["    tune.bufsize 262144"] if splice else []) + [
            "defaults", "    mode tcp"] + (["    option splice-auto"] if splice else []) + [
            "    timeout connect 5s",
            "    timeout client 1h", "    timeout server 1h", "frontend fisherd",
            f"    bind {listen}", "    default_backend fisherd_replicas",
            "backend fisherd_replicas", f"    server replica-0 {replica}", ""])
    text = shipped_config(listen, replica)
    if variant == "shipped":
        return text
    if variant == "defaults":
        return re.sub(r"(?m)^    tune\..*\n", "", text)
    if variant == "nbthread1":
        return text.replace("global\n", "global\n    nbthread 1\n", 1)
    if variant == "window4m":
        return re.sub(r"tune\.h2\.initial-window-size \d+", "tune.h2.initial-window-size 4194304",
                      text)
    if variant == "bufsize1m":
        return re.sub(r"tune\.bufsize \d+", "tune.bufsize 1048576", text)
    if variant == "frame16k":
        return text.replace("global\n", "global\n    tune.h2.max-frame-size 16384\n", 1)
    if variant == "reuse-never":
        return text.replace("backend fisherd_replicas\n",
                            "backend fisherd_replicas\n    http-reuse never\n", 1)
    raise ValueError(f"unknown variant {variant}")


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def proxy_environment():
    """The environment without haproxy.cfg's optional settings (TLS certificates): the
    proxy listens in plain HTTP/2, as fisherd-bench connects."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FISHERD_PROXY_")}


def start_fisherd(procs, binary, log, threads):
    proc = procs.start([binary, "--listen=127.0.0.1:0", f"--math-threads={threads}"], log)
    for _ in range(200):
        text = pathlib.Path(log).read_text()
        found = re.search(r"fisherd listening on (\S+)", text)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            sys.exit(f"fisherd exited:\n{text}")
        time.sleep(0.05)
    sys.exit("fisherd did not start")


def wait_listening(port, proc, log):
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            sys.exit(f"haproxy exited:\n{pathlib.Path(log).read_text()}")
        time.sleep(0.05)
    sys.exit("haproxy did not start listening")


def run_bench(bench, target, shape_args, seconds):
    before = child_cpu_seconds()
    out = subprocess.run([bench, f"--target={target}", "--delete-session",
                          f"--seconds={seconds}", f"--warmup-seconds={WARMUP_SECONDS}"]
                         + shape_args, capture_output=True, text=True, timeout=120)
    client_cpu = child_cpu_seconds() - before
    if out.returncode != 0:
        raise RuntimeError(f"fisherd-bench against {target} failed:\n{out.stdout}{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["client_cpu_seconds"] = client_cpu
    return data


def run_iperf(seconds):
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t",
                              str(max(1, round(seconds))), "-J"], check=True, capture_output=True,
                             text=True, timeout=60)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        server.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=str(REPO / "build"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--variants", default="shipped,tcp",
                        help="comma-separated, from " + ", ".join(VARIANTS) + ", or all")
    parser.add_argument("--shapes", default="",
                        help="comma-separated, from " + ", ".join(SHAPES) + " (default: "
                        + ",".join(DEFAULT_SHAPES) + ")")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="fisherd --math-threads")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, 1 round of 0.3 s: a smoke, no figures")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    build = pathlib.Path(args.build_dir)
    fisherd, bench = build / "server" / "fisherd", build / "bench" / "fisherd-bench"
    for tool in (fisherd, bench):
        if not os.access(tool, os.X_OK):
            sys.exit(f"missing {tool}: build first (or --build-dir=DIR)")
    if not shutil.which("haproxy"):
        sys.exit("haproxy is not installed (Debian: apt-get install haproxy)")
    variants = VARIANTS if args.variants == "all" else [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)} or all")
    if args.quick:
        shapes = dict(QUICK_SHAPES)
        args.rounds, args.seconds = 1, 0.3
    else:
        shapes = {s: SHAPES[s] for s in DEFAULT_SHAPES}
    if args.shapes:
        shapes = QUICK_SHAPES if args.quick else SHAPES
        wanted = args.shapes.split(",")
        unknown = [s for s in wanted if s not in shapes]
        if unknown:
            sys.exit(f"unknown shapes {unknown}; choose from {', '.join(shapes)}")
        shapes = {s: shapes[s] for s in wanted}

    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="fisherd-cluster-bench."))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "cluster_ingest.jsonl"
    results = open(results_path, "w")
    procs = Processes()
    try:
        server, replica = start_fisherd(procs, str(fisherd), out / "fisherd.log", args.threads)
        targets = {"direct": (replica, None)}
        for variant in variants:
            port = free_port()
            listen = f"127.0.0.1:{port}"
            cfg = out / f"haproxy-{variant}.cfg"
            cfg.write_text(variant_config(variant, listen, replica))
            check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True,
                                   text=True, env=proxy_environment())
            if check.returncode != 0:
                sys.exit(f"haproxy rejects {cfg}:\n{check.stdout}{check.stderr}")
            log = out / f"haproxy-{variant}.log"
            # -db: foreground, one process (no master), so /proc/PID/stat is the proxy's.
            proc = procs.start(["haproxy", "-db", "-f", str(cfg)], log, env=proxy_environment())
            wait_listening(port, proc, log)
            targets[variant] = (listen, proc.pid)
        print(f"fisherd {replica} (--math-threads={args.threads}); HAProxy "
              f"{', '.join(f'{v} {t[0]}' for v, t in targets.items() if v != 'direct')}; "
              f"{os.cpu_count()} cores; {args.rounds} rounds of {args.seconds} s; raw results "
              f"in {results_path}", flush=True)
        iperf = shutil.which("iperf3") is not None
        names = list(targets)
        for rnd in range(args.rounds):
            load = os.getloadavg()[0]
            for shape, shape_args in shapes.items():
                shift = rnd % len(names)
                order = names[shift:] + names[:shift]
                line = []
                for name in order:
                    address, pid = targets[name]
                    proxy_before = cpu_seconds(pid) if pid else 0.0
                    server_before = cpu_seconds(server.pid)
                    data = run_bench(str(bench), address, shape_args, args.seconds)
                    proxy_cpu = (cpu_seconds(pid) - proxy_before) if pid else 0.0
                    server_cpu = cpu_seconds(server.pid) - server_before
                    gb = data["payload_bytes_per_second"] * (args.seconds + WARMUP_SECONDS) / 1e9
                    per_gb = (lambda cpu: cpu / gb if gb else None)
                    record = {"kind": "ingest", "round": rnd, "shape": shape, "target": name,
                              "load": load, "proxy_cpu_seconds": proxy_cpu,
                              "server_cpu_seconds": server_cpu,
                              "proxy_cpu_seconds_per_gb": per_gb(proxy_cpu) if pid else None,
                              "total_cpu_seconds_per_gb": per_gb(
                                  proxy_cpu + server_cpu + data["client_cpu_seconds"]), **data}
                    results.write(json.dumps(record) + "\n")
                    results.flush()
                    line.append(f"{name} {data['scores_per_second']:,.0f}")
                print(f"  round {rnd + 1}/{args.rounds} {shape} (load {load:.1f}): "
                      + ", ".join(line), flush=True)
            if iperf:
                rate = run_iperf(args.seconds)
                results.write(json.dumps({"kind": "tcp", "round": rnd,
                                          "bytes_per_second": rate}) + "\n")
                results.flush()
                print(f"  round {rnd + 1}/{args.rounds} loopback TCP (iperf3): "
                      f"{rate / 1e6:,.0f} MB/s", flush=True)
    finally:
        procs.stop()
        results.close()
    return report(results_path, target_ratio=0.85)


def report(path, target_ratio):
    records = [json.loads(line) for line in open(path) if line.strip()]
    ingest = [r for r in records if r["kind"] == "ingest"]
    tcp = [r["bytes_per_second"] for r in records if r["kind"] == "tcp"]
    shapes = list(dict.fromkeys(r["shape"] for r in ingest))
    names = list(dict.fromkeys(r["target"] for r in ingest))
    rows, summary = [], {"tcp_bytes_per_second": statistics.median(tcp) if tcp else None}
    for shape in shapes:
        by = {(r["target"], r["round"]): r for r in ingest if r["shape"] == shape}
        rounds = sorted({rnd for _, rnd in by})
        for name in names:
            runs = [by[(name, rnd)] for rnd in rounds if (name, rnd) in by]
            if not runs:
                continue
            scores = statistics.median(r["scores_per_second"] for r in runs)
            payload = statistics.median(r["payload_bytes_per_second"] for r in runs)
            ratios = [by[(name, rnd)]["scores_per_second"]
                      / by[("direct", rnd)]["scores_per_second"]
                      for rnd in rounds if (name, rnd) in by and ("direct", rnd) in by
                      and by[("direct", rnd)]["scores_per_second"]]
            ratio = statistics.median(ratios) if ratios else None
            per_gb = [r["proxy_cpu_seconds_per_gb"] for r in runs
                      if r.get("proxy_cpu_seconds_per_gb") is not None]
            cpu = statistics.median(per_gb) if per_gb else None
            all_gb = [r["total_cpu_seconds_per_gb"] for r in runs
                      if r.get("total_cpu_seconds_per_gb") is not None]
            total_cpu = statistics.median(all_gb) if all_gb else None
            summary[f"{shape}/{name}"] = {"scores_per_second": scores,
                                          "payload_bytes_per_second": payload,
                                          "ratio_to_direct": ratio,
                                          "ratios": ratios,
                                          "proxy_cpu_seconds_per_gb": cpu,
                                          "total_cpu_seconds_per_gb": total_cpu}
            met = ""
            if name == "shipped" and ratio is not None:
                met = "met" if ratio >= target_ratio else "NOT met"
            rows.append((shape, name, f"{scores:,.0f}", f"{payload / 1e6:,.0f}",
                         "-" if name == "direct" or ratio is None else f"{ratio:.2f}x",
                         f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios and name != "direct"
                         else "-",
                         "-" if cpu is None else f"{cpu:.2f}",
                         "-" if total_cpu is None else f"{total_cpu:.2f}", met))
    header = ("shape", "target", "scores/s", "payload MB/s", "ratio", "per-round",
              "proxy CPU s/GB", "all CPU s/GB", f">= {target_ratio}x")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print("ingest through HAProxy vs straight into the replica: medians over rounds; ratio = "
          "median of the per-round ratios target / direct; CPU seconds per GB of payload: "
          "HAProxy's, and client + fisherd + HAProxy together")
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if tcp:
        print(f"loopback TCP, one stream (iperf3): {statistics.median(tcp) / 1e6:,.0f} MB/s "
              f"(median of {len(tcp)})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        sys.exit(report(sys.argv[2], target_ratio=0.85))
    sys.exit(main())
