"""How fast ExperimentDB writes metric rows and answers the history queries.

Budgets (issue 4): logging 100,000 metric rows under 1 s; list_runs over 2,000 runs under ~0.5 s.
Run from the repository root:  python benchmarks/bench_db.py  [--runs 2000] [--rows 100000]
Every number is the median of --repeat tries, each on a fresh database for the writes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.training import metric_names as M  # noqa: E402
from utils.training.experiment_db import ExperimentDB  # noqa: E402

BATCH_NAMES = (M.BATCH_LOSS, M.LEARNING_RATE, M.GRAD_NORM, M.TOKENS)
EPOCH_NAMES = (M.TRAIN_LOSS, M.VAL_LOSS, M.TRAIN_PERPLEXITY, M.VAL_PERPLEXITY, M.EPOCH_DURATION)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_writes(folder: Path, n_rows: int, repeat: int) -> None:
    steps = n_rows // len(BATCH_NAMES)
    counter = iter(range(10**9))

    def fresh() -> tuple[ExperimentDB, int]:
        db = ExperimentDB(folder / f"writes-{next(counter)}.db", verbose=False)
        return db, db.start_run({"run_name": "bench"})

    def many(batch: int):
        def run() -> None:
            db, run_id = fresh()
            for first in range(0, steps, batch):
                db.log_metrics_many([(run_id, name, 1.0 / (s + 1), s, 1, None)
                                     for s in range(first, min(first + batch, steps))
                                     for name in BATCH_NAMES])
            db.close()
        return run

    def per_step() -> None:
        db, run_id = fresh()
        for s in range(steps):
            db.log_metrics(run_id, dict.fromkeys(BATCH_NAMES, 1.0 / (s + 1)), step=s, epoch=1)
        db.close()

    print(f"Writing {steps * len(BATCH_NAMES):,} metric rows ({steps:,} steps x "
          f"{len(BATCH_NAMES)} metrics), median of {repeat}:")
    for label, fn in (("log_metrics_many, one call", many(steps)),
                      ("log_metrics_many, 250 steps per call (tracker flush)", many(250)),
                      ("log_metrics, one call per step", per_step)):
        seconds = timed(fn, repeat)
        budget = "" if "per step" in label else ("  OK (< 1 s)" if seconds < 1 else "  OVER 1 s")
        print(f"  {label:<55} {seconds:7.3f} s  {n_rows / seconds:>12,.0f} rows/s{budget}")


def build_history(path: Path, n_runs: int, epochs: int, steps_per_epoch: int) -> ExperimentDB:
    rng = random.Random(0)
    db = ExperimentDB(path, verbose=False)
    for r in range(n_runs):
        lr = rng.choice([1e-4, 3e-4, 1e-3])
        run_id = db.start_run({"run_name": f"run-{r}", "learning_rate": lr, "seed": r},
                              tags=["bench", f"group-{r % 10}"], study=f"study-{r % 20}")
        rows = []
        for e in range(1, epochs + 1):
            for s in range((e - 1) * steps_per_epoch, e * steps_per_epoch):
                rows += [(run_id, name, rng.random(), s, e, None) for name in BATCH_NAMES]
            rows += [(run_id, name, rng.random() * 3, e * steps_per_epoch, e, None)
                     for name in EPOCH_NAMES]
        db.log_metrics_many(rows)
        db.finish_run(run_id, rng.choice(["completed", "early_stopped", "failed"]))
    return db


def bench_queries(folder: Path, n_runs: int, repeat: int) -> None:
    epochs, steps_per_epoch = 10, 10
    start = time.perf_counter()
    db = build_history(folder / "history.db", n_runs, epochs, steps_per_epoch)
    rows = db._query("SELECT COUNT(*) FROM metrics")[0][0]
    print(f"\nHistory of {n_runs:,} runs: {epochs} epochs x {len(EPOCH_NAMES)} epoch metrics "
          f"= {epochs * len(EPOCH_NAMES)} epoch rows per run, plus {epochs * steps_per_epoch} steps "
          f"x {len(BATCH_NAMES)} batch metrics; {rows:,} metric rows, built in "
          f"{time.perf_counter() - start:.1f} s. Median of {repeat}:")
    some = list(range(1, n_runs + 1, max(1, n_runs // 10)))[:10]
    cases = [
        ("list_runs()", lambda: db.list_runs(), 0.5),
        ("list_runs(limit=20)", lambda: db.list_runs(limit=20), None),
        ("list_runs(study='study-3')", lambda: db.list_runs(study="study-3"), None),
        ("list_runs(tag='group-3')", lambda: db.list_runs(tag="group-3"), None),
        ("get_metrics(one run)", lambda: db.get_metrics(some[0]), None),
        ("get_metrics_wide(one run)", lambda: db.get_metrics_wide(some[0]), None),
        ("compare_runs(10 runs)", lambda: db.compare_runs(some), None),
        ("compare_table(10 runs)", lambda: db.compare_table(some), None),
        ("best_run()", lambda: db.best_run(), None),
        ("best_run(study='study-3')", lambda: db.best_run(study="study-3"), None),
    ]
    for label, fn, budget in cases:
        seconds = timed(fn, repeat)
        verdict = "" if budget is None else (
            f"  OK (< {budget} s)" if seconds < budget else f"  OVER {budget} s")
        print(f"  {label:<32} {seconds * 1000:9.1f} ms{verdict}")
    start = time.perf_counter()
    db.backup_to(folder / "copy" / "history.db")
    size = (folder / "history.db").stat().st_size / 2**20
    print(f"  {'backup_to (sync), ' + f'{size:.0f} MiB':<32} "
          f"{(time.perf_counter() - start) * 1000:9.1f} ms")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_writes(Path(tmp), args.rows, args.repeat)
        bench_queries(Path(tmp), args.runs, args.repeat)


if __name__ == "__main__":
    main()
