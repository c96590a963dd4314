"""How fast ExperimentDB writes metric rows and answers the history queries.

Budgets: log_metrics once per step under 100 us (10,000 calls of 10 metrics under 1 s; its
slowest call, a settle of staged rows or a WAL checkpoint, is shown too: db_schema.settle);
compare_runs and best_run over 200 runs under 100 ms (one query each, not one per run);
logging 100,000 rows in tracker-sized batches under 1 s; list_runs over 2,000 runs under 0.5 s.

    python benchmarks/bench_db.py [--repeat 5] [--runs 200] [--big-runs 2000]
    python benchmarks/bench_db.py --versus /path/to/an/older/checkout   # side by side

Every figure is the median of --repeat rounds. Each round runs in a fresh process (so --versus
can import another checkout's ``utils.training``); with --versus the two libraries' rounds
alternate, so a busy machine slows both alike. Histories are built once per library and
reused by every round; the write cases start from an empty database each round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BATCH_NAMES = ("train/batch_loss", "train/learning_rate", "train/grad_norm", "train/tokens")
EPOCH_NAMES = ("train/loss", "val/loss", "train/perplexity", "val/perplexity",
               "time/epoch_seconds")
STEP_METRICS = 10  # a step's metrics in the per-step case: loss, lr, grad norm, tokens, timings
CASES = {  # name: (what it measures, budget in seconds or None)
    "log_metrics": ("log_metrics, 10,000 calls x 10 metrics (one per step)", 1.0),
    "log_metrics_cpu": ("  the same, CPU time of this process (no I/O waits)", None),
    "log_metrics_slowest": ("  the same, its slowest call (a settle or a checkpoint)", None),
    "log_metrics_many": ("log_metrics_many, 100,000 rows in batches of 250 steps", 1.0),
    "compare_runs": ("compare_runs(every run)  [{runs} runs]", 0.1),
    "best_run": ("best_run()  [{runs} runs]", 0.1),
    "best_run_study": ("best_run(study=...)  [{runs} runs]", 0.1),
    "list_runs": ("list_runs()  [{runs} runs]", None),
    "big_list_runs": ("list_runs()  [{big} runs]", 0.5),
    "big_compare_runs": ("compare_runs(200 runs)  [{big} runs]", 0.1),
    "big_best_run": ("best_run()  [{big} runs]", 0.1),
}


# ---------------------------------------------------------------------- one round (a subprocess)


def build_history(db, n_runs: int, epochs: int = 10, steps_per_epoch: int = 10) -> None:
    rng = random.Random(0)
    for r in range(n_runs):
        run_id = db.start_run({"run_name": f"run-{r}", "learning_rate": rng.choice([1e-4, 1e-3])},
                              tags=["bench", f"group-{r % 10}"], study=f"study-{r % 20}")
        rows = []
        for e in range(1, epochs + 1):
            for s in range((e - 1) * steps_per_epoch, e * steps_per_epoch):
                rows += [(run_id, name, rng.random(), s, e, None) for name in BATCH_NAMES]
            rows += [(run_id, name, rng.random() * 3, e * steps_per_epoch, e, None)
                     for name in EPOCH_NAMES]
        db.log_metrics_many(rows)
        db.finish_run(run_id, rng.choice(["completed", "early_stopped", "failed"]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_round(folder: Path, runs: int, big: int) -> dict[str, float]:
    from utils.training.experiment_db import ExperimentDB

    out: dict[str, float] = {}
    names = [*BATCH_NAMES, *(f"time/part_{i}" for i in range(STEP_METRICS - len(BATCH_NAMES)))]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        db = ExperimentDB(Path(scratch) / "steps.db", verbose=False)
        run_id = db.start_run({"run_name": "bench"})
        values = [{name: 2.0 + rng.random() for name in names} for _ in range(10_000)]
        clock, slowest = time.perf_counter, 0.0
        start, cpu = clock(), time.process_time()
        for step, metrics in enumerate(values):
            before = clock()
            db.log_metrics(run_id, metrics, step=step, epoch=1 + step // 1000)
            slowest = max(slowest, clock() - before)
        out["log_metrics"] = clock() - start
        out["log_metrics_cpu"] = time.process_time() - cpu
        out["log_metrics_slowest"] = slowest
        db.close()

        db = ExperimentDB(Path(scratch) / "batches.db", verbose=False)
        run_id = db.start_run({"run_name": "bench"})
        steps = 100_000 // len(BATCH_NAMES)

        def batches() -> None:
            for first in range(0, steps, 250):
                db.log_metrics_many([(run_id, name, 1.0 / (s + 1), s, 1, None)
                                     for s in range(first, min(first + 250, steps))
                                     for name in BATCH_NAMES])

        out["log_metrics_many"] = timed(batches)
        db.close()

    for prefix, n_runs in (("", runs), ("big_", big)):
        if not n_runs:
            continue
        path = folder / f"history-{n_runs}.db"
        fresh = not path.exists()
        db = ExperimentDB(path, verbose=False)
        if fresh:
            build_history(db, n_runs)
        for name, fn in queries(db, n_runs).items():
            if f"{prefix}{name}" in CASES:
                fn()  # warm the page cache: every round measures the same state
                out[f"{prefix}{name}"] = timed(fn)
        db.close()
    return out


def queries(db, n_runs: int) -> dict:
    ids = list(range(1, n_runs + 1))[:200]
    return {"compare_runs": lambda: db.compare_runs(ids),
            "best_run": lambda: db.best_run(),
            "best_run_study": lambda: db.best_run(study="study-3"),
            "list_runs": lambda: db.list_runs()}


# ---------------------------------------------------------------------- the driver


def rounds(library: Path, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--round", str(folder), "--library", str(library),
               "--runs", str(args.runs), "--big-runs", str(args.big_runs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"round with {library} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--big-runs", type=int, default=2000, help="0 skips the big history")
    parser.add_argument("--versus", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--library", type=Path, default=HERE, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(args.library.resolve()))
    if args.round is not None:
        print(json.dumps(one_round(args.round, args.runs, args.big_runs)))
        return

    libraries = {"this checkout": HERE} | ({"versus": args.versus.resolve()} if args.versus else {})
    results: dict[str, dict[str, list[float]]] = {label: {} for label in libraries}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {label: Path(tmp) / str(i) for i, label in enumerate(libraries)}
        for folder in folders.values():
            folder.mkdir()
        for _ in range(args.repeat):
            for label, library in libraries.items():
                for case, seconds in rounds(library, folders[label], args).items():
                    results[label].setdefault(case, []).append(seconds)
    labels = list(libraries)
    print(f"ExperimentDB, median of {args.repeat} rounds"
          + (f"; versus = {args.versus}" if args.versus else ""))
    print(f"  {'case':<58}" + "".join(f"{label:>16}" for label in labels) + "  budget")
    for case, (what, budget) in CASES.items():
        if case not in results[labels[0]]:
            continue
        medians = [statistics.median(results[label][case]) for label in labels]
        cells = "".join(f"{m * 1000:>13.1f} ms" for m in medians)
        verdict = "" if budget is None else (
            f"  OK (< {budget * 1000:g} ms)" if medians[0] < budget else f"  OVER {budget * 1000:g} ms")
        print(f"  {what.format(runs=args.runs, big=args.big_runs):<58}{cells}{verdict}")
    per_call = statistics.median(results[labels[0]]["log_metrics"]) / 10_000 * 1e6
    print(f"  log_metrics per call: {per_call:.0f} us (budget 100 us)")


if __name__ == "__main__":
    main()
