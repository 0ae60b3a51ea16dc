#!/usr/bin/env python3
"""ResNet-18's layered session spread over 3 replicas (ShardedLayeredSession) against the
same session on one replica, in the same run.

  /usr/bin/python3 bench/sharded_step_bench.py [--build-dir=build] [--replicas=3]
      [--repeats=5] [--cached-repeats=2] [--fill=2] [--new-rows=16] [--no-serial]
      [--width-divisor=1] [--threads=N] [--shard-threads=N] [--quick] [--out=DIR]

Layout: torchvision's resnet18 in the order of its parameters. Every convolution is a
Kronecker block (in = in_channels * kh * kw, out = out_channels, no bias: conv1 147 -> 64,
the 3x3 convolutions of the four stages up to 4608 -> 512, the 1x1 downsample convolutions
64 -> 128, 128 -> 256, 256 -> 512), every batch norm a diagonal block of its 2 * channels
parameters (weight, bias), fc 512 -> 1000 with bias a Kronecker block: 41 blocks,
11,689,512 parameters (resnet18's count). --width-divisor=D divides every channel count
(and fc's 1000) by D.

It starts replicas + 1 fisherd processes on loopback: the sharded session on the first
`replicas` (--math-threads=--shard-threads, default --threads), the one-replica session on
the last (--math-threads=--threads, default the number of cores). Both get
the same rows: every Kronecker factor fill x its dim random rows (full rank), every
diagonal block 256. Then `repeats` times, in alternating order:
  fresh step  new_rows more rows to every factor and diagonal block of both (untimed), then
              one step of the same gradient on each: the one-replica session's
              Client.step and ShardedLayeredSession.step (the shards in parallel). Every
              Kronecker block must report a new eigendecomposition.
  serial      (unless --no-serial) new_rows more rows to the shards (untimed), then every
              shard's step alone, one after the other: each shard's cost without the others
              competing for the cores, which is what it costs on a machine of its own.
  cached      cached_repeats times: the same steps again without new rows (every block
              must report cached factors), one-replica and sharded, and serial per shard.
Steps use skip_decay and the sessions' damping (1e-3). The first fresh step's answers are
compared: the sharded natural gradient must equal the one-replica one.

Reports medians of: the client's wall time per step, every shard's solver.seconds (its
server's time for its part of the step), their max and sum, the ratio one-replica /
sharded, and the greedy assignment's balance: each shard's blocks and its total of
in^3 + out^3 (the cost ShardedLayeredSession balances), against the largest block's. Also
the client's own share of a sharded step (splitting the gradient into the shards' slices
and putting their answers back, timed on the same vectors), and every process's VmRSS and
VmHWM at the end. Raw JSON lines go to DIR/sharded_step.jsonl; the last line printed is
one JSON object with the medians.

On one machine the shards share its cores: the parallel sharded step is bounded by the
cores, not by the shards. The serial per-shard figures are the ones that carry over to
replicas on machines of their own (docs/performance.md, "Past one machine").
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))

import fisherd  # noqa: E402
from fisherd.sharded import block_cost  # noqa: E402

DAMPING = 1e-3
DIAGONAL_ROWS = 256


def resnet18_blocks(divisor=1):
    """torchvision resnet18's parameters as layered blocks, in parameter order."""
    def c(channels):
        return max(1, channels // divisor)

    def conv(name, cin, cout, k):
        return fisherd.Block(name, "kronecker", in_features=cin * k * k, out_features=cout)

    def bn(name, channels):
        return fisherd.Block(name, "diagonal", dim=2 * channels)

    blocks = [conv("conv1", 3, c(64), 7), bn("bn1", c(64))]
    in_channels = c(64)
    for stage, width in enumerate((c(64), c(128), c(256), c(512)), start=1):
        for unit in range(2):
            prefix = f"layer{stage}.{unit}."
            blocks += [conv(prefix + "conv1", in_channels, width, 3), bn(prefix + "bn1", width),
                       conv(prefix + "conv2", width, width, 3), bn(prefix + "bn2", width)]
            if unit == 0 and in_channels != width:
                blocks += [conv(prefix + "downsample.0", in_channels, width, 1),
                           bn(prefix + "downsample.1", width)]
            in_channels = width
    blocks.append(fisherd.Block("fc", "kronecker", in_features=in_channels,
                                out_features=max(1, 1000 // divisor), bias=True))
    return blocks


def row_parts(blocks, rows_of, rng):
    """(block, factor, rows) parts for stream_blocks: rows_of(block, width) rows of
    standard normal float32 for every factor (Kronecker) or the block (diagonal)."""
    for block in blocks:
        if block.kind == "kronecker":
            for factor, width in (("activations", block.in_features),
                                  ("output_gradients", block.out_features)):
                count = rows_of(block, width if factor == "output_gradients"
                                else block.in_features + int(block.bias))
                yield block.name, factor, rng.standard_normal((count, width), dtype=np.float32)
        else:
            yield block.name, None, rng.standard_normal((rows_of(block, block.dim), block.dim),
                                                        dtype=np.float32)


def stream_both(client, single, sharded, parts, budget_bytes=256 << 20):
    """Streams the same parts into the one-replica session and the sharded one, in groups
    of about budget_bytes (so the whole fill is never in memory at once)."""
    group, size = [], 0

    def flush():
        if group:
            if client is not None:
                client.stream_blocks(single, group)
            sharded.stream_blocks(group)
            group.clear()
    for part in parts:
        group.append(part)
        size += part[2].nbytes
        if size >= budget_bytes:
            flush()
            size = 0
    flush()


def start_fisherd(binary, log, threads, name):
    proc = subprocess.Popen([binary, "--listen=127.0.0.1:0", f"--math-threads={threads}",
                             f"--replica-name={name}"], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    for _ in range(200):
        found = re.search(r"fisherd listening on (\S+)", pathlib.Path(log).read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            sys.exit(f"fisherd exited:\n{pathlib.Path(log).read_text()}")
        time.sleep(0.05)
    sys.exit("fisherd did not start")


def memory_kb(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def check_blocks(result, fresh, what):
    """Every Kronecker block re-decomposed (fresh) or reused its factors (cached)."""
    for summary in result.solver.blocks:
        if summary.method == "diagonal":
            continue
        if summary.factorization_cached == fresh:
            raise SystemExit(f"{what}: block {summary.block} reported factorization_cached="
                             f"{summary.factorization_cached} on a {'fresh' if fresh else 'cached'}"
                             " step")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=str(REPO / "build"))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="fresh steps per side")
    parser.add_argument("--cached-repeats", type=int, default=2,
                        help="cached steps per side after each fresh one")
    parser.add_argument("--fill", type=float, default=2.0,
                        help="rows per Kronecker factor first, in units of its dim")
    parser.add_argument("--new-rows", type=int, default=16,
                        help="rows added to every factor and diagonal block before a fresh step")
    parser.add_argument("--no-serial", action="store_true",
                        help="skip the shards' steps one at a time")
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="fisherd --math-threads of the one-replica process")
    parser.add_argument("--shard-threads", type=int, default=0,
                        help="fisherd --math-threads of every shard's process (default: "
                        "--threads; 1 keeps 3 co-located replicas from oversubscribing the "
                        "cores with OpenBLAS threads)")
    parser.add_argument("--quick", action="store_true",
                        help="channels / 16, 1 repeat: a smoke, no figures")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.quick:
        args.width_divisor, args.repeats, args.cached_repeats = 16, 1, 1
    serial = not args.no_serial

    fisherd_bin = pathlib.Path(args.build_dir) / "server" / "fisherd"
    if not os.access(fisherd_bin, os.X_OK):
        sys.exit(f"missing {fisherd_bin}: build first (or --build-dir=DIR)")
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="fisherd-sharded-bench."))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "sharded_step.jsonl"
    results = open(results_path, "w")

    def record(**fields):
        results.write(json.dumps(fields) + "\n")
        results.flush()

    blocks = resnet18_blocks(args.width_divisor)
    kron = [b for b in blocks if b.kind == "kronecker"]
    parameters = sum(b.parameter_count for b in blocks)
    largest_factor = max(max(b.in_features + int(b.bias), b.out_features) for b in kron)

    procs = []
    clients = []
    try:
        addresses = []
        for k in range(args.replicas + 1):
            name = f"replica-{k}" if k < args.replicas else "single"
            threads = args.threads if k == args.replicas else (args.shard_threads
                                                                 or args.threads)
            proc, address = start_fisherd(str(fisherd_bin), out / f"fisherd-{name}.log",
                                          threads, name)
            procs.append(proc)
            addresses.append(address)
        clients = [fisherd.Client(a, timeout=600.0, stream_timeout=3600.0) for a in addresses]
        shard_clients, client = clients[:args.replicas], clients[-1]
        session_id = f"resnet18-{os.getpid()}"
        single = client.create_session(session_id, blocks=blocks, damping=DAMPING)
        sharded = fisherd.ShardedLayeredSession(shard_clients, session_id, blocks,
                                                damping=DAMPING)

        # The greedy assignment's balance, in the cost it balances.
        costs = [block_cost(b) for b in blocks]
        shard_costs = [sum(c for c, k in zip(costs, sharded.assignment) if k == s)
                       for s in range(args.replicas)]
        biggest = max(range(len(blocks)), key=lambda i: costs[i])
        print(f"resnet18 layout (channels / {args.width_divisor}): {len(blocks)} blocks "
              f"({len(kron)} Kronecker, {len(blocks) - len(kron)} diagonal), {parameters:,} "
              f"parameters, largest factor {largest_factor}; {args.replicas} replicas "
              f"(--math-threads={args.shard_threads or args.threads}) + 1 "
              f"(--math-threads={args.threads}), {os.cpu_count()} cores; raw results in "
              f"{results_path}", flush=True)
        print(f"greedy assignment, cost in^3 + out^3 (1e9): total {sum(costs) / 1e9:.4g}, "
              f"largest block {blocks[biggest].name} {costs[biggest] / 1e9:.4g}", flush=True)
        for s in range(args.replicas):
            names = [b.name for b, k in zip(blocks, sharded.assignment) if k == s]
            heavy = sorted(((costs[i], blocks[i].name) for i in range(len(blocks))
                            if sharded.assignment[i] == s), reverse=True)[:3]
            print(f"  shard {s}: {len(names)} blocks, {sharded._shard_dims[s]:,} parameters, "
                  f"cost {shard_costs[s] / 1e9:.4g} ({shard_costs[s] / sum(costs):.1%}); "
                  f"heaviest {', '.join(f'{n} {c / 1e9:.4g}' for c, n in heavy)}", flush=True)
        record(kind="layout", threads=args.threads,
               shard_threads=args.shard_threads or args.threads, blocks=len(blocks),
               kronecker=len(kron), parameters=parameters,
               width_divisor=args.width_divisor, replicas=args.replicas,
               total_cost=sum(costs), largest_block=blocks[biggest].name,
               largest_cost=costs[biggest], shard_costs=shard_costs,
               shard_blocks=[[b.name for b in sb] for sb in sharded.shard_blocks],
               shard_parameters=list(sharded._shard_dims))

        rng = np.random.default_rng(7)
        t0 = time.perf_counter()
        def fill_rows(block, dim):
            return int(np.ceil(args.fill * dim)) if block.kind == "kronecker" else DIAGONAL_ROWS

        def new_rows(block, dim):
            return args.new_rows
        stream_both(client, single, sharded, row_parts(blocks, fill_rows, rng))
        print(f"  filled both in {time.perf_counter() - t0:.1f} s", flush=True)
        gradient = np.random.default_rng(11).standard_normal(parameters)

        # The client's share of a sharded step: split g, put the answers back.
        t0 = time.perf_counter()
        pieces = [sharded._gather(gradient, k) for k in range(args.replicas)]
        back = np.empty(parameters)
        for k, piece in enumerate(pieces):
            sharded._scatter(piece, k, back)
        split_combine = time.perf_counter() - t0
        assert np.array_equal(back, gradient)
        record(kind="client_split_combine", seconds=split_combine)

        def one(kind):
            t = time.perf_counter()
            result = client.step(single, gradient, skip_decay=True)
            wall = time.perf_counter() - t
            check_blocks(result, kind == "fresh", f"one-replica {kind} step")
            record(kind=kind, side="single", wall=wall, server=result.solver.seconds)
            return result, wall

        def spread(kind):
            t = time.perf_counter()
            result = sharded.step(gradient, skip_decay=True)
            wall = time.perf_counter() - t
            check_blocks(result, kind == "fresh", f"sharded {kind} step")
            shards = [answer.solver.seconds for answer in result.shards]
            record(kind=kind, side="sharded", wall=wall, server=max(shards),
                   shard_seconds=shards)
            return result, wall

        def one_by_one(kind):
            walls, servers = [], []
            for k in range(args.replicas):
                t = time.perf_counter()
                answer = shard_clients[k].step(sharded.shard_names[k], pieces[k],
                                               skip_decay=True)
                walls.append(time.perf_counter() - t)
                servers.append(answer.solver.seconds)
                check_blocks(answer, kind == "fresh", f"shard {k} alone, {kind} step")
            record(kind=kind, side="serial", shard_walls=walls, shard_seconds=servers)
            return walls, servers

        for rep in range(args.repeats):
            if rep > 0:
                stream_both(client, single, sharded, row_parts(blocks, new_rows, rng))
            order = ("single", "sharded") if rep % 2 == 0 else ("sharded", "single")
            answers = {}
            for side in order:
                answers[side], wall = (one if side == "single" else spread)("fresh")
                print(f"  repeat {rep + 1}/{args.repeats} fresh {side}: {wall:.2f} s (server "
                      f"{answers[side].solver.seconds:.2f} s"
                      + (", shards " + ", ".join(f"{a.solver.seconds:.2f}"
                                                 for a in answers[side].shards)
                         if side == "sharded" else "") + ")", flush=True)
            if rep == 0:
                a, b = answers["single"].natural_gradient, answers["sharded"].natural_gradient
                difference = float(np.linalg.norm(a - b) / np.linalg.norm(a))
                record(kind="agreement", relative_difference=difference)
                print(f"  sharded vs one-replica natural gradient: relative difference "
                      f"{difference:.1e}", flush=True)
                if not difference < 1e-9:
                    raise SystemExit("the sharded step does not match the one-replica step")
            for c in range(args.cached_repeats):
                line = []
                for side in order:
                    result, wall = (one if side == "single" else spread)("cached")
                    line.append(f"{side} {wall:.3f} s")
                print(f"  repeat {rep + 1}/{args.repeats} cached {c + 1}: " + ", ".join(line),
                      flush=True)
            if serial:
                # Fresh factors on the shards again (the one-replica session is not stepped
                # here), then every shard's step with the others idle.
                sharded.stream_blocks(list(row_parts(blocks, new_rows, rng)))
                walls, servers = one_by_one("fresh")
                print(f"  repeat {rep + 1}/{args.repeats} fresh, shards one at a time: "
                      + ", ".join(f"{s:.2f}" for s in servers) + " s (server)", flush=True)
                for c in range(args.cached_repeats):
                    one_by_one("cached")
        memory = {("single" if k == args.replicas else f"replica-{k}"): memory_kb(p.pid)
                  for k, p in enumerate(procs)}
        record(kind="memory", **memory)
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        results.close()
    return report(results_path)


def report(path):
    records = [json.loads(line) for line in open(path) if line.strip()]
    layout = next(r for r in records if r["kind"] == "layout")
    replicas = layout["replicas"]
    summary = {"parameters": layout["parameters"], "blocks": layout["blocks"],
               "replicas": replicas, "shard_costs": layout["shard_costs"],
               "largest_cost": layout["largest_cost"], "total_cost": layout["total_cost"]}
    rows = []
    for kind in ("fresh", "cached"):
        single = [r for r in records if r["kind"] == kind and r["side"] == "single"]
        spread = [r for r in records if r["kind"] == kind and r["side"] == "sharded"]
        serial = [r for r in records if r["kind"] == kind and r["side"] == "serial"]
        if not single or not spread:
            continue
        ratios = [a["wall"] / b["wall"] for a, b in zip(single, spread)]
        figures = {
            "single_wall": median(r["wall"] for r in single),
            "single_server": median(r["server"] for r in single),
            "sharded_wall": median(r["wall"] for r in spread),
            "sharded_shard_seconds": [median(r["shard_seconds"][k] for r in spread)
                                      for k in range(replicas)],
            "ratio": median(ratios),
            "ratios": ratios,
        }
        if serial:
            figures["serial_shard_seconds"] = [median(r["shard_seconds"][k] for r in serial)
                                               for k in range(replicas)]
            figures["serial_shard_walls"] = [median(r["shard_walls"][k] for r in serial)
                                             for k in range(replicas)]
            figures["serial_sum"] = median(sum(r["shard_seconds"]) for r in serial)
            figures["serial_max"] = median(max(r["shard_seconds"]) for r in serial)
            figures["serial_max_wall"] = median(max(r["shard_walls"]) for r in serial)
        summary[kind] = figures
        n = len(single)
        rows.append((f"{kind} step, one replica (wall; server)",
                     f"{figures['single_wall']:.3f} s; {figures['single_server']:.3f} s", n))
        rows.append((f"{kind} step, {replicas} shards in parallel (wall)",
                     f"{figures['sharded_wall']:.3f} s", len(spread)))
        rows.append(("  each shard's server seconds, concurrently",
                     ", ".join(f"{s:.3f}" for s in figures["sharded_shard_seconds"]), len(spread)))
        rows.append(("  one replica / sharded (median of paired ratios)",
                     f"{figures['ratio']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})", n))
        if serial:
            rows.append(("  each shard alone, server seconds",
                         ", ".join(f"{s:.3f}" for s in figures["serial_shard_seconds"]),
                         len(serial)))
            rows.append(("  shards alone: sum; max (max of wall)",
                         f"{figures['serial_sum']:.3f} s; {figures['serial_max']:.3f} s "
                         f"({figures['serial_max_wall']:.3f} s)", len(serial)))
            # Paired within a repeat: the one-replica step and the shards alone ran minutes
            # apart at most, on the same rows (plus new_rows).
            apart = [a["wall"] / max(b["shard_walls"]) for a, b in zip(single, serial)]
            whole = [a["server"] / sum(b["shard_seconds"]) for a, b in zip(single, serial)]
            figures["separate_machines_ratio"] = median(apart)
            figures["single_over_sum_of_shards"] = median(whole)
            rows.append(("  one replica / slowest shard alone (wall; separate machines)",
                         f"{median(apart):.2f}x ({min(apart):.2f}-{max(apart):.2f})",
                         len(apart)))
            rows.append(("  one replica / sum of shards alone (server; 1 = no extra work)",
                         f"{median(whole):.2f}x ({min(whole):.2f}-{max(whole):.2f})",
                         len(whole)))
    agreement = [r for r in records if r["kind"] == "agreement"]
    split = [r for r in records if r["kind"] == "client_split_combine"]
    memory = [r for r in records if r["kind"] == "memory"]
    header = ("measure", "median", "n")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(3)]
    print()
    total = layout["total_cost"]
    print(f"ResNet-18 layered ({layout['parameters']:,} parameters, {layout['blocks']} "
          f"blocks) on one replica vs over {replicas}; greedy shard costs (in^3 + out^3): "
          + ", ".join(f"{c / total:.1%}" for c in layout["shard_costs"])
          + f"; largest block {layout['largest_block']} {layout['largest_cost'] / total:.1%}, "
          f"ideal 1/{replicas} = {1 / replicas:.1%}")
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if split:
        summary["client_split_combine_seconds"] = split[0]["seconds"]
        print(f"client: splitting the gradient and putting the answers back "
              f"{split[0]['seconds'] * 1e3:.1f} ms per step")
    if agreement:
        summary["relative_difference"] = agreement[0]["relative_difference"]
    if memory:
        mem = {k: v for k, v in memory[0].items() if k != "kind"}
        summary["memory_kb"] = mem
        print("VmRSS / VmHWM at the end (MiB): " + ", ".join(
            f"{k} {v['VmRSS'] / 1024:.0f} / {v['VmHWM'] / 1024:.0f}" for k, v in mem.items()))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        sys.exit(report(sys.argv[2]))
    sys.exit(main())
