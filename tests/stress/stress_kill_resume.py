"""25 SIGKILLs of one CLI run, then a resume: the long version of tests/test_kill_resume.py.

Not part of ``make test`` (its file name does not match pytest's ``test_*.py``, so discovery
skips it; it takes a few minutes). Run it by name:

    .venv/bin/python -m pytest -q -s tests/stress/stress_kill_resume.py

Besides kills at random steps and in checkpoint writes, it kills the process inside database
transactions (after the statements, before COMMIT) and during the final result writes (a
result file written in full but not yet renamed into place), after training has finished.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the helpers

import kill_resume_helpers as H  # noqa: E402

KILLS = 25
END_KILLS = 6  # of them, at the end of training and after it
SEED = int(os.environ.get("STRESS_SEED", "7"))


def test_25_kills_anywhere_then_resume_exactly(tmp_path):
    rng = random.Random(SEED)
    config = H.write_config(tmp_path)
    straight = tmp_path / "straight"
    H.run_to_end(config, straight)
    ws = tmp_path / "ws"
    run_dir = ws / "checkpoints" / H.RUN

    log: list[str] = []
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts < 3 * KILLS, "\n".join(log)
        step = H.newest_step(run_dir)
        if kills < KILLS - END_KILLS and step < H.TOTAL_STEPS - 4:
            kind = rng.choice(["step", "step", "checkpointing", "checkpoint", "transaction"])
        elif step < H.TOTAL_STEPS:  # the process that finishes training: in the COMMIT that
            kind = "finish"  # closes the run row (its checkpoint is written by then)
        else:  # a finished run: the result files and database writes of the processes after it
            kind = rng.choice(["result", "result", "transaction", "late"])
        if kind == "step":
            what = H.kill_at_step(H.start(config, ws), run_dir, step + rng.randrange(1, 6), rng)
        elif kind == "checkpointing":
            what = H.kill_while_checkpointing(H.start(config, ws), run_dir, step + 1)
        elif kind == "late":  # a random moment of a process that has little or nothing to train
            what = H.kill_after(H.start(config, ws), run_dir, rng.uniform(1.0, 3.5))
        else:
            finished = step >= H.TOTAL_STEPS  # a process with nothing to train writes little
            count = {"checkpoint": rng.randrange(1, 5), "finish": 1,
                     "transaction": rng.randrange(1, 3 if finished else 12),
                     "result": 1 if finished else rng.randrange(1, 4)}[kind]
            code, out = H.finish_trapped(H.start(config, ws, trap=f"{kind}:{count}"))
            if code != -signal.SIGKILL:
                assert code == 0, out
                log.append(f"    {kind}:{count}: the process finished before the trap fired")
                continue
            what = f"killed by trap {kind}:{count} (after step {H.newest_step(run_dir)})"
        if what == "finished first":
            log.append(f"    {kind}: the process finished before the kill")
            continue
        kills += 1
        log.append(f"{kills:2d}. {kind}: {what}")
    out = H.run_to_end(config, ws)
    print("\n".join(log))
    print(out[-600:])

    problems = []
    for name, check in [
        ("weights", lambda: H.assert_same_weights(H.final_weights(straight),
                                                  H.final_weights(ws))),
        ("metrics", lambda: H.assert_every_row_once(ws, straight)),
    ]:
        try:
            check()
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
    if (run_dir / "set-aside").exists():
        problems.append(f"set aside: {sorted(p.name for p in (run_dir / 'set-aside').iterdir())}")
    left = [str(p.relative_to(ws)) for p in H.temp_files(ws)]
    print(f"temp files before a later start's sweep: {left}")
    swept = H.temp_files_after_a_later_start(ws)
    if swept:
        problems.append(f"temp files left: {swept}")
    # A kill inside the COMMIT that closes the run row leaves it `running`; the next start finds
    # the run finished and closes the row.
    stray = H.stray_running_rows(ws)
    if stray:
        problems.append(f"stray running rows: {stray}")
    assert not problems, "\n".join(problems + log)
