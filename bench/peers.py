#!/usr/bin/env python3
"""The Python peers fisherd is compared against, run in-process.

  peers.py numpy --dim=N --batch=B --seconds=S
      F += S.T @ S per batch of B float64 score rows (the float32 scores widened once,
      the precision fisherd keeps its sums in): scores/s.
  peers.py torch --dim=N --batch=B --repeats=R [--threads=T]
      one batch end to end as a PyTorch user writes it: F = S^T S / N + lambda I,
      Cholesky, solve (float64): median seconds.
The last line printed is one JSON object.
"""
import argparse
import json
import statistics
import time


def numpy_peer(args):
    import numpy as np
    rng = np.random.default_rng(1)
    s = rng.standard_normal((args.batch, args.dim), dtype=np.float32).astype(np.float64)
    f = np.zeros((args.dim, args.dim))
    f += s.T @ s  # warm-up
    batches = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < args.seconds:
        f += s.T @ s
        batches += 1
        elapsed = time.perf_counter() - start
    rate = batches * args.batch / elapsed
    print(f"numpy F += S.T @ S dim {args.dim} batch {args.batch}: {rate:.0f} scores/s")
    print(json.dumps({"peer": "numpy", "dim": args.dim, "batch": args.batch,
                      "numpy": np.__version__, "scores_per_second": rate}))


def torch_peer(args):
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    dim, batch = args.dim, args.batch
    eye = torch.eye(dim, dtype=torch.float64)
    g = torch.randn(dim, 1, dtype=torch.float64)
    times = []
    for r in range(args.repeats + 1):
        s = torch.randn(batch, dim, dtype=torch.float32)
        start = time.perf_counter()
        s64 = s.to(torch.float64)
        f = s64.T @ s64 / batch + 1e-3 * eye
        factor = torch.linalg.cholesky(f)
        n = torch.cholesky_solve(g, factor)
        elapsed = time.perf_counter() - start
        if r > 0:
            times.append(elapsed)
    assert torch.isfinite(n).all()
    median = statistics.median(times)
    print(f"torch dim {dim} batch {batch} threads {torch.get_num_threads()}: F, Cholesky, solve "
          f"{median:.4f} s (median of {len(times)})")
    print(json.dumps({"peer": "torch", "dim": dim, "batch": batch, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "seconds": median}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=["numpy", "torch"])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    numpy_peer(args) if args.peer == "numpy" else torch_peer(args)


if __name__ == "__main__":
    main()
