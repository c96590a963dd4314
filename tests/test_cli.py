"""The command line as a person uses it: train, redraw the dashboard, and clear errors (exit 2)."""

from __future__ import annotations

from utils.training.__main__ import main

TINY = ["run_name=cli", "data_source=synthetic", "vocab_size=16", "synthetic_tokens=6000",
        "n_layers=1", "n_heads=2", "d_model=32", "block_size=16", "batch_size=8", "epochs=2",
        "precision=fp32", "sample_tokens=0"]


def sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_train_then_dashboard_from_the_database(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["train", "--workspace", ws, "--no-progress", *sets(TINY)]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "completed after 2 epochs" in out
    assert (tmp_path / "ws" / "results" / "cli_dashboard.png").is_file()
    assert main(["dashboard", "cli", "--workspace", ws, "--output", str(tmp_path / "d.svg")]) == 0
    assert (tmp_path / "d.svg").read_text().lstrip().startswith("<?xml")


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["train", "--workspace", ws, *sets(["learning_rate=-1", "n_heads=3"])]) == 2
    err = capsys.readouterr().err
    assert "learning_rate = -1.0" in err and "n_heads = 3" in err and "Traceback" not in err
    assert main(["dashboard", "nosuch", "--workspace", ws]) == 2
    assert "no run named 'nosuch'" in capsys.readouterr().err
