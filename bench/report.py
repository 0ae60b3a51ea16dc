#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into the table of issue #3.

Each row: measure, fisherd, peer, ratio, target, met. Figures are medians over the
repeats of the run; a row whose peer is missing says so instead of a ratio.
"""
import argparse
import json
import statistics
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--float32-products", action="store_true",
                        help="the run's dense sessions used the float32 batch kernel")
    args = parser.parse_args()

    values = {}
    for line in open(args.results):
        line = line.strip()
        if line:
            record = json.loads(line)
            values.setdefault(record["key"], []).append(record["data"])

    def median(key, field):
        runs = [r[field] for r in values.get(key, []) if field in r]
        return statistics.median(runs) if runs else None

    def info(key, field):
        runs = values.get(key, [])
        return runs[0].get(field) if runs else None

    rows = []

    def row(measure, ours, peer, unit, target_text, ratio, ok):
        if ours is None and peer is None:
            return  # not measured in this run (e.g. bench/run.sh --layered-only)
        def fmt(v):
            if v is None:
                return "n/a"
            if unit == "s":
                return f"{v:.4f} s"
            if unit == "B/s":
                return f"{v / 1e6:.0f} MB/s"
            if unit == "x":
                return f"{v:.3g}"
            return f"{v:,.0f} {unit}"
        if ratio is None:
            ratio_text = "n/a"
        else:
            ratio_text = f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.1e}x"
        if ok is None:
            met = "(for reference)"
        else:
            met = "n/a" if ratio is None else ("met" if ok(ratio) else "NOT met")
        rows.append((measure, fmt(ours), fmt(peer), ratio_text, target_text, met))

    def paired(key_a, field_a, key_b, field_b, invert=False):
        """Median over the repeats of the per-repeat ratio a / b (b / a when invert):
        each repeat ran both back to back, so pairing cancels most of the machine's
        drift between repeats."""
        a_runs, b_runs = values.get(key_a, []), values.get(key_b, [])
        ratios = []
        for a, b in zip(a_runs, b_runs):
            if field_a in a and field_b in b and a[field_a] and b[field_b]:
                ratios.append(b[field_b] / a[field_a] if invert else a[field_a] / b[field_b])
        return statistics.median(ratios) if ratios else None

    small, large = info("dense_small", "dim"), info("dense_large", "dim")
    f_small = median("dense_small", "scores_per_second")
    f_large = median("dense_large", "scores_per_second")
    b_small = median("blas_small", "scores_per_second")
    b_large = median("blas_large", "scores_per_second")
    n_small = median("numpy_small", "scores_per_second")
    w8 = median("dense_small_w8", "scores_per_second")
    diag = median("diagonal", "payload_bytes_per_second")
    tcp = median("tcp", "bytes_per_second")
    step = median("step", "step_seconds")
    cached = median("step", "cached_step_seconds")
    batch_step = median("step", "batch_and_step_seconds")
    lapack = median("lapack", "factor_and_solve_seconds")
    solves = median("lapack", "two_solves_seconds")
    torch = median("torch", "seconds")
    step_dim = info("step", "dim")

    row(f"dense ingest dim {small}, gRPC vs OpenBLAS dsyrk", f_small, b_small, "scores/s",
        ">= 0.8x", paired("dense_small", "scores_per_second", "blas_small", "scores_per_second"), lambda r: r >= 0.8)
    row(f"dense ingest dim {large}, gRPC vs OpenBLAS dsyrk", f_large, b_large, "scores/s",
        ">= 0.9x", paired("dense_large", "scores_per_second", "blas_large", "scores_per_second"), lambda r: r >= 0.9)
    row(f"dense ingest dim {small}, gRPC vs NumPy F += S.T @ S", f_small, n_small, "scores/s",
        ">= 2x", paired("dense_small", "scores_per_second", "numpy_small", "scores_per_second"), lambda r: r >= 2.0)
    row(f"diagonal ingest dim {info('diagonal', 'dim')} x {info('diagonal', 'batch')} rows, "
        "payload vs iperf3 loopback", diag, tcp, "B/s", ">= 0.5x", paired("diagonal", "payload_bytes_per_second", "tcp", "bytes_per_second"),
        lambda r: r >= 0.5)
    row(f"step dim {step_dim} after new samples vs dpotrf + 2 trsv", step, lapack, "s",
        "<= 1.2x", paired("step", "step_seconds", "lapack", "factor_and_solve_seconds"), lambda r: r <= 1.2)
    row(f"cached step dim {step_dim} vs 2 trsv", cached, solves, "s", "<= 2x",
        paired("step", "cached_step_seconds", "lapack", "two_solves_seconds"), lambda r: r <= 2.0)
    fresh = median("fresh_step", "batch_and_step_seconds")
    fresh_method = info("fresh_step", "method")
    row(f"batch (256) + step dim {step_dim}, new session as PyTorch ({fresh_method}), "
        "PyTorch / fisherd time", fresh, torch, "s",
        ">= 3x faster", paired("fresh_step", "batch_and_step_seconds", "torch", "seconds", invert=True),
        lambda r: r >= 3.0)
    row(f"  the same into a session past dim/16 samples (cholesky)", batch_step, torch, "s", "-",
        paired("step", "batch_and_step_seconds", "torch", "seconds", invert=True), None)
    row(f"8 workers vs 1, dense dim {small}", w8, f_small, "scores/s", ">= 0.9x",
        paired("dense_small_w8", "scores_per_second", "dense_small", "scores_per_second"), lambda r: r >= 0.9)
    mem = values.get("memory", [None])[0]
    if mem:
        session_bytes = (mem["after_kb"] - mem["idle_kb"]) * 1024.0
        budget = 8.0 * mem["dim"] ** 2
        row(f"resident memory, dense dim {mem['dim']} session (peak "
            f"{(mem['peak_kb'] - mem['idle_kb']) / 1024:.0f} MiB)", session_bytes / 2**20,
            budget / 2**20, "MiB", "<= 1.5x", session_bytes / budget, lambda r: r <= 1.5)
    acc = median("accuracy", "relative_error")
    if acc is not None:
        row(f"accuracy, {info('accuracy', 'samples')} samples streamed at dim "
            f"{info('accuracy', 'dim')}: relative Frobenius error of F vs long-double sums",
            acc, 1e-6, "x", "<= 1e-6 (ratio to it)", acc / 1e-6, lambda r: r <= 1.0)

    # Layered sessions: fisherd-layered-bench pairs fisherd with its in-process peer
    # inside one call and reports medians and the median of the per-repeat ratios.
    kron_dim = info("kronecker_ingest", "dim")
    row(f"Kronecker ingest in = out = {kron_dim}, 256-row A batches, gRPC vs dsyrk k = 256",
        median("kronecker_ingest", "rows_per_second"),
        median("kronecker_ingest", "dsyrk_rows_per_second"), "rows/s", ">= 0.75x",
        median("kronecker_ingest", "ratio"), lambda r: r >= 0.75)
    layered = values.get("resnet18_step", [None])[0]
    if layered:
        shape = (f"ResNet-18 as {layered['blocks']} Kronecker blocks "
                 f"({layered['parameters'] / 1e6:.3g}M parameters"
                 + (f", channels / {layered['width_divisor']}" if layered["width_divisor"] > 1 else "")
                 + ")")
        row(f"{shape}: streamed step after new rows in every factor vs "
            "dsyevd of every factor + 4 dgemm per block",
            median("resnet18_step", "step_seconds"), median("resnet18_step", "peer_fresh_seconds"),
            "s", "<= 1.2x", median("resnet18_step", "fresh_ratio"), lambda r: r <= 1.2)
        row("  server's solver.seconds (peer: its dsyevd alone)",
            median("resnet18_step", "step_server_seconds"),
            median("resnet18_step", "peer_dsyevd_seconds"), "s", "-", None, None)
        row("  the same step, cached factors, vs the 4 dgemm per block",
            median("resnet18_step", "cached_step_seconds"),
            median("resnet18_step", "peer_products_seconds"), "s", "<= 1.3x",
            median("resnet18_step", "cached_ratio"), lambda r: r <= 1.3)
        row("  server's solver.seconds, cached factors",
            median("resnet18_step", "cached_step_server_seconds"),
            median("resnet18_step", "peer_products_seconds"), "s", "-",
            median("resnet18_step", "cached_step_server_seconds")
            / median("resnet18_step", "peer_products_seconds"), None)
        if layered.get("rss_kb"):
            row(f"  fisherd's VmRSS holding it, after the steps (VmHWM "
                f"{layered['hwm_kb'] / 1024:.0f} MiB) vs factors + eigenvectors, 2 n^2 8 each",
                layered["rss_kb"] / 1024.0, layered["factor_bytes"] / 2**20, "MiB", "<= 1.2x",
                layered["memory_ratio"], lambda r: r <= 1.2)

    for key, gemm in (("mlp_step", "dgemm"), ("mlp_step_f32", "sgemm")):
        mlp = values.get(key, [None])[0]
        if not mlp:
            continue
        shape = (f"MLP 784-1000-1000-10 as {mlp['blocks']} Kronecker blocks"
                 + (f" (widths / {mlp['width_divisor']})" if mlp["width_divisor"] > 1 else "")
                 + (", float32_products" if mlp.get("float32_products") else ""))
        row(f"{shape}: cached step vs the 4 {gemm} per block",
            median(key, "cached_step_seconds"), median(key, "peer_products_seconds"), "s",
            "-", median(key, "cached_ratio"), None)
        row("  server's solver.seconds, cached factors",
            median(key, "cached_step_server_seconds"), median(key, "peer_products_seconds"),
            "s", "-", median(key, "cached_step_server_seconds")
            / median(key, "peer_products_seconds"), None)

    header = ("measure", "fisherd", "peer", "ratio", "target", "met")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print(f"fisherd vs in-process peers: {args.threads} cores; OpenBLAS, NumPy and PyTorch "
          f"with {args.threads} threads; fisherd --math-threads={args.threads}; figures are "
          f"medians of {args.repeats} runs, ratios medians of the per-run ratios; dense "
          f"sessions with {'float32_products' if args.float32_products else 'exact float64 products'}")
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if values.get("kronecker_ingest") or layered:
        parts = []
        if values.get("kronecker_ingest"):
            parts.append(f"Kronecker ingest {info('kronecker_ingest', 'repeats')} repeats")
        if layered:
            parts.append(f"ResNet-18 steps {layered['repeats']} fresh and "
                         f"{layered['repeats'] * layered['cached_repeats']} cached")
        print("layered rows: medians and paired ratios inside fisherd-layered-bench ("
              + ", ".join(parts) + "); fisherd's figures are client wall times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
