"""The matmul peak of this machine in fp32 and bf16: the denominator of MFU on a CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_matmul_peak.py [--n 2048] [--tries 7] [--json]

A square n x n matmul (2 n^3 FLOPs) repeated until about 0.3 s has passed, --tries times; the
best try is the peak (another process on the machine only ever lowers a try), the median is
printed beside it to show the noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def gflops(n: int, dtype: torch.dtype, tries: int) -> list[float]:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: thread pool, kernels
    out = []
    for _ in range(tries):
        reps, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.3:
            a @ b
            reps += 1
        out.append(2 * n**3 * reps / elapsed / 1e9)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--tries", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"n": args.n, "threads": torch.get_num_threads()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        values = gflops(args.n, dtype, args.tries)
        result[name], result[f"{name}_median"] = max(values), statistics.median(values)
        print(f"{name}: peak {max(values):.0f} GFLOP/s (median {statistics.median(values):.0f}, "
              f"{args.tries} tries of {args.n}^2, {result['threads']} threads)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
