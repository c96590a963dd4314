"""LivePlotter, TrainingDashboard and run comparison: assertions on the artists, not just files."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from utils.training import live_plotting, plot_style
from utils.training import metric_names as M
from utils.training.dashboard import PANELS, TrainingDashboard
from utils.training.history import comparison_table, metrics_frames, plot_run_comparison
from utils.training.live_plotting import LivePlotter
from utils.training.plot_style import PlotError, downsample, ema

# Tests never open a window. The library itself never calls use(): it draws on its own Agg
# canvases, so a notebook's inline backend is left alone.
matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
MARKER_GIDS = {"best-epoch", "clip-threshold"}


# ---------------------------------------------------------------------- fake run data


def fake_run(epochs=6, steps_per_epoch=50, gpu=False, seed=0):
    """Plausible tracker output: summary (one row per epoch) and batch history (one per step)."""
    rng = np.random.default_rng(seed)
    n = epochs * steps_per_epoch
    step = np.arange(1, n + 1)
    loss = 1.5 + 5 * np.exp(-step / 40) + rng.normal(0, 0.05, n)
    history = pd.DataFrame({
        M.STEP: step, M.EPOCH: (step - 1) // steps_per_epoch + 1, M.BATCH_LOSS: loss,
        M.LEARNING_RATE: 1e-3 * np.minimum(1, step / 20) * (1 - step / (n + 1)),
        M.GRAD_NORM: 0.4 + 3 * np.exp(-step / 30) + np.abs(rng.normal(0, 0.1, n)),
        M.TOKENS: 4096,
    })
    val = [1.6 + 0.8 * math.exp(-e / 1.5) + 0.02 * max(0, e - 4) ** 2 for e in range(1, epochs + 1)]
    rows = []
    for e in range(1, epochs + 1):
        part = history[history[M.EPOCH] == e]
        train = float(part[M.BATCH_LOSS].mean())
        row = {M.EPOCH: e, M.TRAIN_LOSS: train, M.VAL_LOSS: val[e - 1],
               M.TRAIN_PERPLEXITY: math.exp(train), M.VAL_PERPLEXITY: math.exp(val[e - 1]),
               M.LEARNING_RATE: float(part[M.LEARNING_RATE].iloc[-1]),
               M.GRAD_NORM: float(part[M.GRAD_NORM].iloc[-1]), M.EPOCH_DURATION: 30.0 + e,
               M.TOKENS_PER_SEC: 4096 * steps_per_epoch / (30.0 + e)}
        if gpu:
            row.update({M.GPU_MEMORY_USED_GB: 9.5, M.GPU_MEMORY_TOTAL_GB: 15.0,
                        M.GPU_UTILIZATION: 95.0, M.GPU_MAX_MEMORY_ALLOCATED_GB: 8.0,
                        M.GPU_TEMPERATURE_C: 70.0, M.GPU_POWER_W: 60.0})
        else:
            row[M.CPU_RSS_GB] = 1.5 + 0.01 * e
        rows.append(row)
    return pd.DataFrame(rows), history


CONFIG = {"run_name": "demo", "learning_rate": 1e-3, "batch_size": 16, "grad_accum_steps": 2,
          "block_size": 128, "n_layers": 2, "n_heads": 2, "d_model": 64, "precision": "bf16",
          "max_grad_norm": 1.0}


def data_artists(ax):
    """Lines, bars and collections that carry data on ``ax`` and its twin axes (markers excluded)."""
    found = []
    for axis in [ax, *ax.get_shared_x_axes().get_siblings(ax)]:
        for line in axis.lines:
            if line.get_gid() not in MARKER_GIDS and np.isfinite(np.asarray(line.get_ydata(), float)).sum() >= 1:
                found.append(line)
        found += [p for p in axis.patches if p.get_height() > 0]
        found += [c for c in axis.collections if len(c.get_offsets())]
    return list({id(a): a for a in found}.values())


def texts(ax):
    return " ".join(t.get_text() for t in ax.texts)


# ---------------------------------------------------------------------- dashboard


@pytest.mark.parametrize("gpu", [False, True])
def test_dashboard_every_panel_has_data(gpu):
    summary, history = fake_run(gpu=gpu)
    dash = TrainingDashboard(summary, history, config=CONFIG)
    fig = dash.plot()
    assert tuple(dash.panels) == PANELS
    for name, ax in dash.panels.items():
        assert data_artists(ax), f"panel {name} has no data"
        assert "no data" not in texts(ax), name
    hardware = dash.panels["hardware"]
    if gpu:
        assert "GPU" in hardware.get_title()
        labels = [line.get_label() for line in data_artists(hardware)]
        assert any("utilisation" in label for label in labels)
        assert any("peak allocated" in label for label in labels)
    else:
        assert hardware.get_title().startswith("CPU run")
        assert "no GPU" in hardware.get_title()
    # Suptitle: run name and key hyperparameters.
    title = fig.get_suptitle()
    for part in ("demo", "lr 1e-3", "batch 16 x 2", "block 128", "bf16", "best val loss"):
        assert part in title
    # Integer epoch ticks on the epoch panels.
    ticks = dash.panels["loss"].get_xticks()
    assert np.allclose(ticks, np.round(ticks))


def test_perplexity_panel_shows_next_token_accuracy_when_measured():
    summary, history = fake_run()
    plain = TrainingDashboard(summary, history, config=CONFIG)
    plain.plot()
    assert "accuracy" not in plain.panels["perplexity"].get_title()
    summary[M.VAL_ACCURACY] = np.linspace(0.2, 0.5, len(summary))
    dash = TrainingDashboard(summary, history, config=CONFIG)
    fig = dash.plot()
    assert "accuracy" in dash.panels["perplexity"].get_title()
    twin = [ax for ax in fig.axes if ax.get_ylabel() == "next-token accuracy (%)"]
    assert len(twin) == 1 and np.allclose(twin[0].lines[0].get_ydata(), 100 * summary[M.VAL_ACCURACY])


def test_best_epoch_marker_and_clip_threshold():
    summary, history = fake_run(epochs=8)
    best_epoch = int(summary.loc[summary[M.VAL_LOSS].idxmin(), M.EPOCH])
    assert best_epoch not in (1, 8)  # the fake data overfits: the best epoch is in the middle
    dash = TrainingDashboard(summary, history, config=CONFIG, max_grad_norm=0.75)
    dash.plot()
    (marker,) = [ln for ln in dash.panels["loss"].lines if ln.get_gid() == "best-epoch"]
    assert np.allclose(marker.get_xdata(), best_epoch)
    best_value = summary[M.VAL_LOSS].min()
    assert f"{best_value:.4f}" in texts(dash.panels["loss"])
    (clip,) = [ln for ln in dash.panels["grad_norm"].lines if ln.get_gid() == "clip-threshold"]
    assert np.allclose(clip.get_ydata(), 0.75)  # the explicit argument wins over the config
    assert "clip threshold 0.75" in clip.get_label()
    assert dash.panels["grad_norm"].get_ylim()[1] > 0.75  # a threshold the norms reach stays in view


def test_loss_panel_zooms_past_a_huge_first_epoch():
    summary, history = fake_run(epochs=6)
    summary.loc[0, M.TRAIN_LOSS] = 9.0  # epoch 1 averages the steps at ln(vocab)
    dash = TrainingDashboard(summary, history)
    dash.plot()
    ax = dash.panels["loss"]
    assert ax.get_ylim()[1] < 9.0
    assert ax.get_ylim()[0] < summary[M.VAL_LOSS].min()
    assert "train 9.00 at epoch 1 (off scale)" in texts(ax)  # the hidden number is still shown


def test_dashboard_keeps_the_last_record_of_a_repeated_epoch():
    summary, history = fake_run(epochs=4)
    redo = summary.iloc[[2]].assign(**{M.VAL_LOSS: 1.0})  # epoch 3 logged again after a resume
    dash = TrainingDashboard(pd.concat([summary, redo]), pd.concat([history, history.tail(5)]))
    assert list(dash.summary[M.EPOCH]) == [1, 2, 3, 4] and dash.summary[M.VAL_LOSS][2] == 1.0
    assert dash.batch_history[M.STEP].is_unique


def test_dashboard_without_batch_history_uses_epoch_values():
    summary, _ = fake_run()
    dash = TrainingDashboard(summary, None, config=CONFIG)
    dash.plot()
    for name, ax in dash.panels.items():
        assert data_artists(ax), name
    assert dash.panels["learning_rate"].get_xlabel().startswith("epoch")


def test_empty_panels_say_no_data():
    summary = pd.DataFrame({M.EPOCH: [1, 2], M.TRAIN_LOSS: [3.0, 2.5]})
    dash = TrainingDashboard(summary)
    dash.plot()
    assert data_artists(dash.panels["loss"]) and data_artists(dash.panels["perplexity"])
    for name in ("learning_rate", "grad_norm", "speed", "hardware"):
        assert "no data" in texts(dash.panels[name]), name
    # No val loss: no best-epoch marker, and no crash.
    assert not [ln for ln in dash.panels["loss"].lines if ln.get_gid() == "best-epoch"]


def test_dashboard_does_not_change_global_style():
    before = dict(matplotlib.rcParams)
    summary, history = fake_run()
    TrainingDashboard(summary, history).plot()
    plot_run_comparison({"a": summary})
    assert dict(matplotlib.rcParams) == before


def test_save_formats(tmp_path):
    summary, history = fake_run(epochs=3)
    dash = TrainingDashboard(summary, history, config=CONFIG)
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".SVG", b"<?xml")):
        path = dash.save(tmp_path / "out" / f"dash{suffix}", dpi=40)
        assert path == tmp_path / "out" / f"dash{suffix}"
        assert path.read_bytes().startswith(magic)
    assert dash._repr_png_().startswith(b"\x89PNG")  # a dashboard left last in a cell shows itself
    # Atomic writes leave no temp file behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dash.SVG", "dash.pdf", "dash.png"]


def test_save_rejects_unknown_extension(tmp_path):
    summary, _ = fake_run(epochs=2)
    with pytest.raises(ValueError, match=r"\.png.*\.pdf.*\.svg"):
        TrainingDashboard(summary).save(tmp_path / "dash.jpg")
    assert not list(tmp_path.iterdir())


def test_dashboard_rejects_non_frame():
    with pytest.raises(PlotError, match="DataFrame"):
        TrainingDashboard([{"epoch": 1}])


class FakeTracker:
    def __init__(self, summary, history):
        self._summary, self._history = summary, history

    def get_summary(self):
        return self._summary

    def batch_history(self):
        return self._history


def test_from_tracker():
    summary, history = fake_run(gpu=True)
    dash = TrainingDashboard.from_tracker(FakeTracker(summary, history), run_name="t", config=CONFIG)
    assert dash.run_name == "t" and dash.max_grad_norm == 1.0
    assert len(dash.batch_history) == len(history)
    with pytest.raises(PlotError, match="get_summary"):
        TrainingDashboard.from_tracker(object())


def long_metrics(summary, history):
    """What ExperimentDB.get_metrics returns: one row per (name, value, step, epoch, wall_time)."""
    rows = []
    for r in history.to_dict("records"):
        for name in (M.BATCH_LOSS, M.LEARNING_RATE, M.GRAD_NORM, M.TOKENS):
            rows.append({"name": name, "value": r[name], "step": r[M.STEP], "epoch": r[M.EPOCH],
                         "wall_time": float(r[M.STEP])})
    per_epoch = history.groupby(M.EPOCH)[M.STEP].max()
    for r in summary.to_dict("records"):
        for name, value in r.items():
            if name != M.EPOCH:
                step = per_epoch[r[M.EPOCH]]
                rows.append({"name": name, "value": value, "step": step, "epoch": r[M.EPOCH],
                             "wall_time": step + 0.5})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # the DB promises no order


class FakeDB:
    def __init__(self, runs):
        self.runs = runs  # run_id -> (run dict, metrics frame)

    def get_run(self, run_id):
        return self.runs.get(run_id, (None, None))[0]

    def get_metrics(self, run_id):
        return self.runs[run_id][1]


def test_metrics_frames_pivots_the_long_table():
    summary, history = fake_run(epochs=4, gpu=True)
    got_summary, got_history = metrics_frames(long_metrics(summary, history))
    assert list(got_summary[M.EPOCH]) == [1, 2, 3, 4]
    pd.testing.assert_series_equal(got_summary[M.VAL_LOSS], summary[M.VAL_LOSS], check_names=False)
    assert np.allclose(got_summary[M.LEARNING_RATE], summary[M.LEARNING_RATE])
    assert np.allclose(got_summary[M.GPU_UTILIZATION], 95.0)
    assert list(got_history[M.STEP]) == list(history[M.STEP])
    assert np.allclose(got_history[M.BATCH_LOSS], history[M.BATCH_LOSS])
    assert np.allclose(got_history[M.GRAD_NORM], history[M.GRAD_NORM])
    assert list(got_history[M.EPOCH]) == list(history[M.EPOCH])


def test_from_db():
    summary, history = fake_run(epochs=4)
    db = FakeDB({7: ({"name": "stored-run", "config": json.dumps(CONFIG)},
                     long_metrics(summary, history))})
    dash = TrainingDashboard.from_db(db, 7)
    assert dash.run_name == "stored-run" and dash.max_grad_norm == 1.0
    dash.plot()
    for name, ax in dash.panels.items():
        assert data_artists(ax), name
    with pytest.raises(PlotError, match="No run with id 99"):
        TrainingDashboard.from_db(db, 99)


def test_title_names_the_precision_used_not_auto():
    summary, history = fake_run(epochs=2)
    auto = {**CONFIG, "precision": "auto"}
    assert "fp16" in TrainingDashboard(summary, history, config=auto, precision="fp16").title()
    assert "auto" not in TrainingDashboard(summary, history, config=auto).title()
    db = FakeDB({3: ({"name": "r", "config": auto, "summary": {"precision": "bf16"}},
                     long_metrics(summary, history))})
    title = TrainingDashboard.from_db(db, 3).title()
    assert "bf16" in title and "auto" not in title


def test_perplexity_axis_labels_a_narrow_range_with_several_ticks():
    summary, history = fake_run(epochs=5)
    summary[M.VAL_PERPLEXITY] = [17.0, 14.0, 12.0, 10.0, 9.2]
    summary[M.TRAIN_PERPLEXITY] = [16.5, 13.0, 11.0, 9.6, 9.0]
    dash = TrainingDashboard(summary, history, config=CONFIG)
    dash.plot()
    ax = dash.panels["perplexity"]
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert len(ticks) >= 3, ticks  # 1-2-5 decade ticks would leave only "10"
    assert ticks == sorted(ticks) and all(t == round(t) for t in ticks)
    # A wide range keeps the decade ticks.
    wide = plot_style.PerplexityLocator().tick_values(20, 8000)
    assert {50, 100, 1000, 5000} <= {round(t) for t in wide}


def test_cpu_panel_keeps_memory_and_throughput_apart():
    summary, history = fake_run(epochs=1)  # one epoch: one point each, at the same x
    dash = TrainingDashboard(summary, history, config=CONFIG)
    fig = dash.plot()
    fig.savefig(io.BytesIO(), format="png")
    ax = dash.panels["hardware"]
    axes = list({id(a): a for a in [ax, *ax.get_shared_x_axes().get_siblings(ax)]}.values())
    points = [axis.transData.transform(line.get_xydata()[0]) for axis in axes
              for line in axis.lines]
    assert len(points) == 2
    assert np.hypot(*(points[0] - points[1])) > 30  # pixels apart: neither hides the other
    legend = [axis.get_legend() for axis in axes if axis.get_legend() is not None]
    assert len(legend) == 1
    assert sorted(t.get_text() for t in legend[0].get_texts()) == [
        "process memory (GiB)", "throughput (tokens/s)"]


# ---------------------------------------------------------------------- comparison


def test_plot_run_comparison_one_line_per_run():
    runs = {name: fake_run(epochs=e, seed=i)[0] for i, (name, e) in enumerate([("a", 3), ("b", 5), ("c", 4)])}
    fig = plot_run_comparison(runs)
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    labels = [line.get_label() for line in ax.lines]
    for name, frame in runs.items():
        best = frame[M.VAL_LOSS].min()
        assert any(label.startswith(name) and f"{best:.4f}" in label for label in labels)


@pytest.mark.parametrize("shape", ["long", "wide"])
def test_plot_run_comparison_from_one_frame(shape):
    epochs = [1, 2, 3]
    if shape == "long":
        frame = pd.DataFrame({"run_name": ["x"] * 3 + ["y"] * 3, M.EPOCH: epochs * 2,
                              "value": [3.0, 2.5, 2.4, 3.1, 2.2, 2.3]})
    else:
        frame = pd.DataFrame({"x": [3.0, 2.5, 2.4], "y": [3.1, 2.2, 2.3]}, index=epochs)
    (ax,) = plot_run_comparison(frame).axes
    assert sorted(line.get_label().split(":")[0] for line in ax.lines) == ["x", "y"]
    assert any("best 2.2000 @ epoch 2" in line.get_label() for line in ax.lines)


def test_plot_run_comparison_rejects_empty():
    with pytest.raises(PlotError, match="No runs"):
        plot_run_comparison({})


def test_comparison_table_keeps_only_differing_hyperparameters():
    s1, _ = fake_run(epochs=3)
    s2, _ = fake_run(epochs=5, seed=1)
    runs = [
        {"name": "small-lr", "config": {**CONFIG, "learning_rate": 1e-4, "run_name": "small-lr"},
         "summary": s1},
        {"name": "big-lr", "config": {**CONFIG, "run_name": "big-lr"}, "summary": s2},
        {"name": "crashed", "config": {**CONFIG, "learning_rate": 3e-4}},
    ]
    table = comparison_table(runs)
    assert list(table["run"]) == ["small-lr", "big-lr", "crashed"]
    assert "learning_rate" in table.columns
    assert "block_size" not in table.columns and "run_name" not in table.columns
    assert table.loc[0, "best val/loss"] == pytest.approx(s1[M.VAL_LOSS].min())
    assert table.loc[1, "epochs"] == 5
    assert table.loc[1, "train time (s)"] == pytest.approx(s2[M.EPOCH_DURATION].sum())
    assert table.loc[1, "tokens/s"] == pytest.approx(s2[M.TOKENS_PER_SEC].mean())
    assert math.isnan(table.loc[2, "best val/loss"]) and table.loc[2, "epochs"] == 0


def test_comparison_legend_sits_beside_the_curves():
    runs = {name: fake_run(epochs=6, seed=i)[0] for i, name in enumerate(["a", "b", "c", "d"])}
    fig = plot_run_comparison(runs)
    fig.savefig(io.BytesIO(), format="png")
    (ax,) = fig.axes
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # right of the axes: it covers no data
    assert legend.x1 <= fig.bbox.x1 + 1  # and still inside the saved picture


def _run(name, **config):
    summary, _ = fake_run(epochs=3)
    return {"name": name, "config": {**CONFIG, "run_name": name, **config}, "summary": summary}


def test_comparison_table_blanks_settings_that_do_not_apply():
    local = dict(data_source="local", data_path="corpus.txt", dataset_name="wikitext",
                 dataset_config="wikitext-2-raw-v1", tokenizer="byte", vocab_size=8192,
                 synthetic_tokens=200000, synthetic_order=1)
    hub = {**local, "data_source": "huggingface", "data_path": ""}
    table = comparison_table([_run("file", **local), _run("hub", **hub)])
    rows = table.set_index("run")
    assert rows.loc["file", "dataset_name"] == "" and rows.loc["hub", "dataset_name"] == "wikitext"
    assert rows.loc["file", "data_path"] == "corpus.txt" and rows.loc["hub", "data_path"] == ""
    # Applies to neither run (or is the same where it does): no column at all.
    assert not {"synthetic_tokens", "synthetic_order", "vocab_size", "tokenizer"} & set(table)
    assert "caveat" not in table.attrs  # both byte-level: their losses compare

    synthetic = {**local, "data_source": "synthetic", "vocab_size": 16}
    table = comparison_table([_run("file", **local), _run("chain", **synthetic)])
    rows = table.set_index("run")
    assert "dataset_name" not in table.columns and "dataset_config" not in table.columns
    assert rows.loc["file", "synthetic_tokens"] == "" and rows.loc["chain", "synthetic_tokens"] == 200000
    builtin, exported = _run("gpt", model_source="builtin"), _run("gist", model_source="gist",
                                                                 model_ref="abc")
    table = comparison_table([builtin, {**exported, "config": {**exported["config"], "n_layers": 9}}])
    rows = table.set_index("run")
    assert rows.loc["gist", "n_layers"] == ""  # the export's own config.json decides its depth
    assert rows.loc["gpt", "n_layers"] == 2 and rows.loc["gpt", "model_ref"] == ""


def test_runs_with_different_tokenizers_carry_a_caveat():
    base = dict(data_source="huggingface", dataset_name="wikitext", data_path="")
    runs = [_run("bpe", **base, tokenizer="bpe", vocab_size=8192),
            _run("bytes", **base, tokenizer="byte", vocab_size=8192)]
    table = comparison_table(runs)
    caveat = table.attrs["caveat"]
    assert "different tokenizers" in caveat and "not comparable" in caveat
    assert list(table["tokenizer"]) == ["BPE 8192 of wikitext", "byte"]
    fig = plot_run_comparison({r["name"]: r["summary"] for r in runs}, caveat=caveat)
    fig.savefig(io.BytesIO(), format="png")
    (ax,) = fig.axes
    assert "different tokenizers" in ax.get_title() and "across 2 runs" in fig.get_suptitle()
    same = comparison_table([_run("a", **base, tokenizer="byte"), _run("b", **base, tokenizer="byte",
                                                                     learning_rate=1e-2)])
    assert "caveat" not in same.attrs and "tokenizer" not in same.columns


def test_run_comparison_table_from_the_db_keeps_the_caveat(tmp_path, capsys):
    from utils.training.experiment_db import ExperimentDB
    from utils.training.history import run_comparison_table, show_run_comparison

    with ExperimentDB(tmp_path / "x.db", verbose=False) as db:
        for name, tokenizer in (("one", "bpe"), ("two", "char")):
            config = {**CONFIG, "run_name": name, "data_source": "local", "data_path": "a.txt",
                      "dataset_name": "wikitext", "tokenizer": tokenizer, "vocab_size": 4096}
            run_id = db.start_run(config)
            for epoch in (1, 2):
                db.log_metrics(run_id, {M.TRAIN_LOSS: 3.0 / epoch, M.VAL_LOSS: 3.2 / epoch},
                               step=epoch * 10, epoch=epoch)
            db.finish_run(run_id)
        table = run_comparison_table(db)
        assert list(table["run"]) == ["one", "two"] and "dataset_name" not in table.columns
        assert "different tokenizers" in table.attrs["caveat"]
        show_run_comparison(db, last=2)
    assert "Caution: These runs use different tokenizers" in capsys.readouterr().out


# ---------------------------------------------------------------------- helpers


def test_downsample_caps_points_and_keeps_spikes():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 5000)
    y[54_321] = 50.0
    dx, dy = downsample(x, y, 1000)
    assert len(dx) <= 1000 and dx[-1] == x[-1]
    assert 50.0 in dy  # min/max bucketing keeps the spike a stride would drop
    sx, sy = downsample(x, y, 1000, keep_extremes=False)
    assert len(sx) <= 1000 and sx[0] == 0 and sx[-1] == x[-1]
    short = np.arange(10.0)
    assert len(downsample(short, short, 1000)[0]) == 10


def test_ema_is_bias_corrected():
    values = np.full(50, 3.0)
    assert np.allclose(ema(values, 0.9), 3.0)  # no drag towards 0 at the start
    steps = np.array([0.0, 10.0])
    smoothed = ema(steps, 0.5)
    assert smoothed[0] == 0.0 and smoothed[1] == pytest.approx((10 + 0.5 * 0) / 1.5)
    with_nan = ema(np.array([1.0, np.nan, 1.0]), 0.9)
    assert np.isfinite(with_nan[2])


# ---------------------------------------------------------------------- LivePlotter


def quick(**kwargs):
    """A LivePlotter whose renders are cheap: these tests count draws, they do not look at pixels."""
    return LivePlotter(dpi=30, figsize=(6.0, 2.5), **kwargs)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(live_plotting.time, "monotonic", fake)
    return fake


def step(plotter, i, loss=None, epoch=1):
    plotter.on_step_end(None, {M.STEP: i, M.EPOCH: epoch, M.BATCH_LOSS: 2.0 if loss is None else loss,
                               M.LEARNING_RATE: 1e-3, M.GRAD_NORM: 0.5, M.TOKENS: 64})


def epoch_end(plotter, epoch, at_step, loss=2.0):
    plotter.on_epoch_end(None, {M.EPOCH: epoch, M.STEP: at_step, M.TRAIN_LOSS: loss,
                                M.VAL_LOSS: loss + 0.1, M.TRAIN_PERPLEXITY: math.exp(loss),
                                M.VAL_PERPLEXITY: math.exp(loss + 0.1)})


def test_live_plotter_throttles(clock):
    plotter = quick(every_seconds=5.0, live=True, max_share=0)
    for i in range(1, 1001):  # 1,000 steps within one second
        clock.now += 0.001
        step(plotter, i)
    assert 1 <= plotter.draws <= 2
    clock.now += 5.0
    step(plotter, 1001)
    assert plotter.draws == 2  # due again once every_seconds have passed
    epoch_end(plotter, 1, 1001)
    assert plotter.draws == 3  # epoch ends always redraw


def test_live_plotter_cost_cap_spaces_out_slow_redraws(clock):
    # max_share=1e-6: any real redraw (well over 10 microseconds) buys a wait far past 10 s.
    capped = quick(every_seconds=1.0, live=True, max_share=1e-6)
    free = quick(every_seconds=1.0, live=True, max_share=0)
    for plotter in (capped, free):
        step(plotter, 1)
    clock.now += 10.0
    for plotter in (capped, free):
        step(plotter, 2)
    assert (capped.draws, free.draws) == (1, 2)
    clock.now += 1e7  # ...but never forever
    step(capped, 3)
    assert capped.draws == 2


def test_live_plotter_reuses_artists_and_downsamples():
    plotter = LivePlotter(live=False, max_points=300)
    losses = 2 + 3 * np.exp(-np.arange(5000) / 500)
    for i, loss in enumerate(losses, start=1):
        step(plotter, i, loss)
    fig = plotter.figure()
    loss_ax, ppl_ax = fig.axes
    lines_before = list(loss_ax.lines)
    raw, smooth = plotter._artists["raw"], plotter._artists["smooth"]
    epoch_end(plotter, 1, 5000)
    assert plotter.figure() is fig
    assert list(loss_ax.lines) == lines_before  # set_data on the same lines, no re-plotting
    assert len(raw.get_xdata()) <= 300 and len(smooth.get_xdata()) <= 300
    # Smoothing ran on all 5,000 points before downsampling: the last value matches.
    assert smooth.get_ydata()[-1] == pytest.approx(ema(losses, 0.9)[-1])
    assert raw.get_xdata()[-1] == 5000
    assert list(plotter._artists["val"].get_xdata()) == [5000]
    assert list(plotter._artists["val_ppl"].get_xdata()) == [1]
    plotter.close()  # drops the figure, keeps the history
    assert plotter._fig is None and len(plotter.figure().axes[0].lines[0].get_xdata()) > 0


def test_live_plot_keeps_the_initial_loss_from_flattening_the_rest():
    plotter = LivePlotter(live=False)
    for i in range(1, 501):
        step(plotter, i, 10.0 if i <= 10 else 2.0 + 0.01 * (i % 7))
    ax = plotter.figure().axes[0]
    assert 2.06 < ax.get_ylim()[1] < 3.0
    assert ax.get_ylim()[0] < 2.0


def test_live_plotter_outside_notebook_draws_nothing_and_saves_png(tmp_path, clock):
    plotter = LivePlotter(results_dir=tmp_path / "results", run_name="quiet", every_seconds=0)
    for i in range(1, 101):
        clock.now += 10
        step(plotter, i, 3 - i / 100)
    epoch_end(plotter, 1, 100)
    assert plotter.draws == 0 and plotter._fig is None
    plotter.on_train_end(None, None)
    png = tmp_path / "results" / "quiet_live.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert plotter.draws == 0


def test_live_plotter_saves_at_the_path_it_was_given(tmp_path):
    from utils.training.workspace import UnsafeNameError

    png = tmp_path / "chosen" / "plot.png"
    plotter = LivePlotter(run_name="any", path=png, live=False)
    step(plotter, 1, 3.0)
    plotter.on_train_end(None, None)
    assert png.read_bytes().startswith(b"\x89PNG") and plotter.save() == png
    with pytest.raises(UnsafeNameError, match="cannot name a file"):
        LivePlotter(results_dir=tmp_path, run_name="../outside")  # refused before training


class FakeHandle:
    def __init__(self):
        self.updates = 0

    def update(self, obj):
        assert obj.data.startswith(b"\x89PNG")
        self.updates += 1


def test_live_plotter_in_notebook_updates_one_display(monkeypatch, clock):
    import IPython.display

    shown, handle = [], FakeHandle()

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(obj)
        return handle

    def clear_output(*args, **kwargs):
        raise AssertionError("clear_output would wipe the progress bar and samples")

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython.display, "clear_output", clear_output)
    monkeypatch.setattr(live_plotting, "in_notebook", lambda: True)
    plotter = quick(every_seconds=1.0, max_share=0)
    for i in range(1, 11):
        clock.now += 0.5
        step(plotter, i)
    epoch_end(plotter, 1, 10)
    assert len(shown) == 1 and shown[0].data.startswith(b"\x89PNG")
    assert handle.updates == plotter.draws - 1 >= 4


def test_figures_render_in_a_fresh_notebook_kernel(monkeypatch):
    # A kernel where pyplot never loaded the inline backend knows no Figure printer; leaving
    # dashboard.plot() as a cell's last line must still show a picture, not "<Figure ...>".
    import types

    import IPython
    from IPython.core.formatters import DisplayFormatter

    shell = types.SimpleNamespace(display_formatter=DisplayFormatter(), kernel=object())
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    summary, history = fake_run(epochs=2, steps_per_epoch=5)
    fig = plot_run_comparison({"a": summary})
    png, _ = shell.display_formatter.format(fig, include={"image/png"})
    assert png["image/png"]  # base64 PNG
    # A printer the user configured (say SVG) is left alone.
    svg_shell = types.SimpleNamespace(display_formatter=DisplayFormatter(), kernel=object())
    svg_shell.display_formatter.formatters["image/svg+xml"].for_type(type(fig), lambda f: "<svg/>")
    monkeypatch.setattr(IPython, "get_ipython", lambda: svg_shell)
    TrainingDashboard(summary, history).plot()
    formats, _ = svg_shell.display_formatter.format(fig)
    assert "image/png" not in formats and formats["image/svg+xml"] == "<svg/>"


def test_live_plotter_state_round_trip(clock):
    first = LivePlotter(live=False)
    for i in range(1, 51):
        step(first, i, 3 - i / 50)
    epoch_end(first, 1, 50)
    state = first.state_dict()
    # Plain Python values only: checkpoints load with torch.load(weights_only=True).
    assert all(type(v) is float for v in state["steps"] + state["losses"])
    json.dumps(state)

    resumed = LivePlotter(live=False)
    resumed.load_state_dict(state)
    for i in range(51, 61):
        step(resumed, i, 1.5)
    fig = resumed.figure()
    raw = resumed._artists["raw"]
    assert raw.get_xdata()[0] == 1 and raw.get_xdata()[-1] == 60  # earlier history is shown
    assert len(resumed._artists["train"].get_xdata()) == 1
    assert "step 60" in fig.axes[0].get_title()
    with pytest.raises(PlotError, match="inconsistent"):
        LivePlotter().load_state_dict({"steps": [1.0], "losses": []})


def test_live_plotter_update_from_tracker_and_frames(clock):
    summary, history = fake_run(epochs=3)
    plotter = quick(live=True, max_share=0)
    plotter.update(FakeTracker(summary, history))
    assert plotter.draws == 1
    assert len(plotter.steps) == len(history)
    # Epoch points sit at the last step of each epoch.
    assert list(plotter._artists["val"].get_xdata()) == [50, 100, 150]
    plotter.update(summary.iloc[:2], force=True)
    assert plotter.draws == 2 and len(plotter._artists["val"].get_xdata()) == 2
    with pytest.raises(PlotError, match="get_summary"):
        plotter.update([1, 2, 3])


def test_live_plotter_rejects_bad_arguments():
    with pytest.raises(PlotError, match="every_seconds.*smoothing"):
        LivePlotter(every_seconds=-1, smoothing=1.5)
    with pytest.raises(PlotError, match="results_dir"):
        LivePlotter().save()


def test_live_plotter_as_trainer_callback(tmp_path, tiny_config):
    from utils.training.run import prepare

    config = tiny_config(epochs=2)
    plotter = LivePlotter(results_dir=tmp_path, run_name=config.run_name)
    trainer = prepare(config).trainer([plotter], progress=False, verbose=False)
    trainer.fit()
    assert len(plotter.steps) == trainer.global_step and len(plotter.epochs) == 2
    assert (tmp_path / f"{config.run_name}_live.png").is_file()


def test_plotting_modules_never_import_torch():
    # Load the package's modules without its __init__ (which imports the trainer, hence torch).
    code = textwrap.dedent(f"""
        import sys, types
        for name, path in (("utils", {str(ROOT / "utils")!r}),
                           ("utils.training", {str(ROOT / "utils" / "training")!r})):
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
        import pandas as pd
        from utils.training.dashboard import TrainingDashboard
        from utils.training.live_plotting import LivePlotter
        from utils.training.history import plot_run_comparison
        summary = pd.DataFrame({{"epoch": [1, 2], "train/loss": [3.0, 2.0], "val/loss": [3.1, 2.2]}})
        TrainingDashboard(summary).plot()
        plot_run_comparison({{"a": summary}})
        LivePlotter(live=True).update(summary)
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch imported: False"


def fake_evaluations(history, every=40):
    """A step-cadence run's evaluations: val (and train since the last one) at every ``every``."""
    steps = list(range(every, int(history[M.STEP].max()) + 1, every))
    rows = []
    for i, step in enumerate(steps):
        part = history[(history[M.STEP] > step - every) & (history[M.STEP] <= step)]
        train = float(part[M.BATCH_LOSS].mean())
        val = 1.6 + 0.8 * math.exp(-(i + 1) / 2) + 0.01 * max(0, i - 4) ** 2
        rows.append({M.STEP: step, M.EPOCH: int(part[M.EPOCH].iloc[-1]), M.TRAIN_LOSS: train,
                     M.VAL_LOSS: val, M.TRAIN_PERPLEXITY: math.exp(train),
                     M.VAL_PERPLEXITY: math.exp(val)})
    return pd.DataFrame(rows)


def test_a_step_cadence_dashboard_plots_every_evaluation_at_its_step(tmp_path):
    summary, history = fake_run(epochs=2, steps_per_epoch=200)
    summary = summary.drop(columns=[M.VAL_LOSS, M.VAL_PERPLEXITY])  # as such a run's epoch rows
    evals = fake_evaluations(history)
    board = TrainingDashboard(summary, history, config=CONFIG, evaluations=evals)
    board.plot()
    loss = board.panels["loss"]
    val = next(line for line in loss.lines if line.get_label() == "validation")
    assert list(val.get_xdata()) == list(evals[M.STEP]) and loss.get_xlabel() == "optimizer step"
    assert any(line.get_label() == "train (batch, EMA 0.9)" for line in loss.lines)
    assert board.panels["perplexity"].get_xlabel() == "optimizer step"
    best = int(evals[M.VAL_LOSS].idxmin())
    assert f"(step {int(evals[M.STEP][best]):,})" in board.title() and "10 evaluations" in board.title()
    assert board.save(tmp_path / "cadence.png").stat().st_size > 50_000
    # An epoch run is drawn as before: no evaluations, epochs on the x axis.
    plain = TrainingDashboard(*fake_run(), config=CONFIG)
    plain.plot()
    assert plain.evaluations is None and plain.panels["loss"].get_xlabel() == "epoch"


def test_the_live_plot_puts_each_evaluation_at_its_step(tmp_path):
    _, history = fake_run(epochs=2, steps_per_epoch=200)
    evals = fake_evaluations(history)
    plotter = LivePlotter(run_name="cadence", live=False)
    at = dict(zip(evals[M.STEP], evals.to_dict("records")))
    for row in history.to_dict("records"):
        plotter.on_step_end(None, row)
        if row[M.STEP] in at:
            plotter.on_evaluate(None, at[row[M.STEP]])
    plotter.on_epoch_end(None, {M.EPOCH: 2, M.TRAIN_LOSS: 1.7})  # no val: the evaluations have it
    loss_ax, ppl_ax = plotter.figure().axes
    val = next(line for line in loss_ax.lines if line.get_label() == "val (every eval)")
    assert list(val.get_xdata()) == [float(s) for s in evals[M.STEP]]
    assert ppl_ax.get_xlabel() == "optimizer step" and "(step 400)" in loss_ax.get_title()
    restored = LivePlotter(live=False)
    restored.load_state_dict(plotter.state_dict())
    assert restored.evals == plotter.evals
    assert plotter.save(tmp_path / "live.png").stat().st_size > 20_000
