"""SIGKILL the CLI mid-run, a few times, and resume: nothing lost, nothing repeated, nothing left.

A Colab VM that is taken away does not raise KeyboardInterrupt; the process just stops, at any
instruction. Each kill here is a real SIGKILL of ``python -m utils.training train``: at random
steps, the moment a checkpoint is being written, and half-way through one. After the last
resume the run must equal an uninterrupted one bit for bit, hold every step's metrics exactly
once, and leave no temp file. (tests/stress/ does 25 kills, in database transactions and
result writes too; it is not part of ``make test``.)
"""

from __future__ import annotations

import random
import signal

import kill_resume_helpers as H


def test_sigkills_at_random_steps_and_mid_checkpoint_then_resume_exactly(tmp_path):
    rng = random.Random(20240611)  # seeded: the same kill points every time
    config = H.write_config(tmp_path)
    straight = tmp_path / "straight"
    H.run_to_end(config, straight)
    ws = tmp_path / "ws"
    run_dir = ws / "checkpoints" / H.RUN

    happened = []
    # A kill anywhere inside a step of epoch 1 ...
    happened.append(H.kill_at_step(H.start(config, ws), run_dir, rng.randrange(3, 20), rng))
    # ... the moment a checkpoint's temp file exists ...
    after = H.newest_step(run_dir) + rng.randrange(2, 8)
    happened.append(H.kill_while_checkpointing(H.start(config, ws), run_dir, after))
    # ... with half a checkpoint on disk (from inside: the process kills itself mid-write) ...
    code, out = H.finish_trapped(H.start(config, ws, trap=f"checkpoint:{rng.randrange(3, 9)}"))
    assert code == -signal.SIGKILL, out
    happened.append("killed half-way through writing a checkpoint")
    # ... and in epoch 2, after resuming across the epoch boundary.
    step = max(H.newest_step(run_dir), H.STEPS_PER_EPOCH) + rng.randrange(3, 20)
    happened.append(H.kill_at_step(H.start(config, ws), run_dir, step, rng))
    out = H.run_to_end(config, ws)
    assert f"completed after {H.CONFIG['epochs']} epochs" in out, (happened, out)

    H.assert_same_weights(H.final_weights(straight), H.final_weights(ws))
    H.assert_every_row_once(ws, straight)
    assert not (run_dir / "set-aside").exists()  # no kill ever left a corrupt checkpoint name
    # Checkpoint folders sweep their temp files at start-up; the rest of the workspace sweeps
    # a dead writer's temp files once they are 10 minutes old.
    assert [p for p in H.temp_files(ws) if "results" not in p.parts] == [], happened
    assert H.temp_files_after_a_later_start(ws) == [], happened
    assert H.stray_running_rows(ws) == [], happened


def test_sigkill_between_two_evaluations_of_a_step_budget_resumes_exactly(tmp_path):
    """A step budget with evaluation every 20 steps, killed between two evaluations."""
    config = H.write_config(tmp_path, epochs=1000, max_steps=60, eval_every_steps=20)
    straight = tmp_path / "straight"
    H.run_to_end(config, straight)
    ws = tmp_path / "ws"
    run_dir = ws / "checkpoints" / H.RUN

    happened = H.kill_at_step(H.start(config, ws), run_dir, 27, random.Random(7))
    out = H.run_to_end(config, ws)
    assert "max_steps" in out, (happened, out)

    H.assert_same_weights(H.final_weights(straight, total_steps=60),
                          H.final_weights(ws, total_steps=60))
    H.assert_every_row_once(ws, straight, total_steps=60)  # val rows at 20, 40, 60 included
    runs, metrics = H.metric_rows(ws)
    assert sorted(m[2] for m in metrics if m[1] == "val/loss") == [20, 40, 60]
    assert H.stray_running_rows(ws) == [] and len(runs) == 1, (happened, runs)
