"""TrainingConfig: validation reports every problem, JSON round-trips exactly, files are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from utils.training.training_config import (
    MODES,
    ConfigError,
    TrainingConfig,
    mode_for_epochs,
)


def problems_of(cfg: TrainingConfig) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    return info.value


def test_defaults_validate_and_validate_returns_self() -> None:
    cfg = TrainingConfig()
    assert cfg.validate() is cfg
    assert cfg.effective_d_ff == 4 * cfg.d_model
    assert cfg.tokens_per_step == 16 * 1 * 256


def test_config_error_is_value_error_and_pickles() -> None:
    import pickle

    err = ConfigError(["a = 1: bad", "b = 2: worse"], "Header")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems
    assert str(again) == str(err) == "Header (2 problems):\n- a = 1: bad\n- b = 2: worse"


def test_many_bad_fields_raise_one_error_naming_all() -> None:
    cfg = TrainingConfig(
        run_name="bad name!", learning_rate=-1.0, batch_size=0, epochs=0, warmup_ratio=0.9,
        adam_beta2=1.0, precision="fp8", dropout=1.0, block_size=4, val_fraction=0.0,
        model_source="gist", data_source="local", tokenizer="wordpiece", keep_checkpoints=0,
        checkpoint_every_minutes=0.0, synthetic_order=4, n_layers=200,
    )
    err = problems_of(cfg)
    names = ["run_name", "learning_rate", "batch_size", "epochs", "warmup_ratio", "adam_beta2",
             "precision", "dropout", "block_size", "val_fraction", "model_ref", "data_path",
             "tokenizer", "keep_checkpoints", "checkpoint_every_minutes", "synthetic_order",
             "n_layers"]
    message = str(err)
    for name in names:
        assert f"- {name} = " in message, name
    assert len(err.problems) == len(names)
    # Each problem on its own line, with the value and the allowed range.
    assert "- learning_rate = -1.0: must be > 0 and <= 1" in message.splitlines()
    assert "fp8" in message and "auto, bf16, fp16, fp32" in message


def test_problems_are_in_field_order() -> None:
    err = problems_of(TrainingConfig(wandb_tags=[1], run_name="", seed=-1))
    assert [p.split(" ")[0] for p in err.problems] == ["run_name", "seed", "wandb_tags"]


def test_d_model_not_divisible_names_both_numbers() -> None:
    err = problems_of(TrainingConfig(d_model=250, n_heads=6))
    (line,) = err.problems
    assert "d_model" in line and "250" in line and "6" in line
    assert "252" in line  # a fix is suggested


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("batch_size", "abc", "whole number"),
        ("batch_size", 2.5, "whole number"),
        ("epochs", True, "True/False"),
        ("learning_rate", "0.1", "number"),
        ("learning_rate", False, "number"),
        ("learning_rate", float("nan"), "finite"),
        ("compile", 1, "True or False"),
        ("run_name", 7, "string"),
        ("wandb_tags", ["ok", 3], "list of strings"),
    ],
)
def test_type_errors(name: str, value: object, needle: str) -> None:
    err = problems_of(TrainingConfig(**{name: value}))
    assert any(p.startswith(f"{name} = {value!r}") and needle in p for p in err.problems), err


def test_ints_are_accepted_for_float_fields() -> None:
    cfg = TrainingConfig(learning_rate=1, max_grad_norm=0).validate()
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize(
    "changes",
    [
        {"model_source": "folder", "model_ref": "/content/export"},
        {"data_source": "drive", "data_path": "/content/drive/MyDrive/*.txt"},
        {"data_source": "huggingface"},
        {"tokenizer": "/tmp/my-tokenizer.json"},
        {"resume": "/tmp/ckpt.pt"},
        {"use_wandb": True, "wandb_tags": ["a", "b"]},
        {"max_grad_norm": 0.0, "eval_max_batches": 0, "d_ff": 0, "sample_tokens": 0},
    ],
)
def test_valid_variants(changes: dict) -> None:
    TrainingConfig(**changes).validate()


def test_conditional_requirements() -> None:
    err = problems_of(TrainingConfig(data_source="huggingface", dataset_name="",
                                     use_wandb=True, wandb_project=" ", resume=""))
    text = str(err)
    assert "dataset_name" in text and "wandb_project" in text and "resume" in text


def test_synthetic_needs_one_validation_block() -> None:
    err = problems_of(TrainingConfig(synthetic_tokens=1000, block_size=512))
    assert "synthetic_tokens" in str(err) and "5130" in str(err)


def test_post_init_normalises_tags_without_validating() -> None:
    assert TrainingConfig(wandb_tags=("a", "b")).wandb_tags == ["a", "b"]
    assert TrainingConfig(wandb_tags=" a, b ,,c").wandb_tags == ["a", "b", "c"]
    TrainingConfig(learning_rate=-5)  # building a bad config is fine; validate() judges it


@pytest.mark.parametrize(("epochs", "mode"), [(1, "fast"), (5, "fast"), (6, "balanced"),
                                              (15, "balanced"), (16, "quality"), (99, "quality")])
def test_mode_boundaries(epochs: int, mode: str) -> None:
    assert TrainingConfig(epochs=epochs).mode == mode == mode_for_epochs(epochs)


@pytest.mark.parametrize("mode", MODES)
def test_presets_validate_and_match_their_mode(mode: str) -> None:
    cfg = TrainingConfig.preset(mode).validate()
    assert cfg.mode == mode


def test_presets_grow_and_take_overrides() -> None:
    fast, balanced, quality = (TrainingConfig.preset(m) for m in MODES)
    assert (balanced.n_layers, balanced.d_model, balanced.n_heads) == (6, 384, 6)
    assert (quality.n_layers, quality.d_model, quality.block_size) == (8, 512, 512)
    assert fast.d_model < balanced.d_model < quality.d_model
    assert TrainingConfig.preset("Balanced", run_name="x").run_name == "x"
    with pytest.raises(ConfigError, match="fast, balanced, quality"):
        TrainingConfig.preset("turbo")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainingConfig.preset("fast", epoch=3)


def test_json_round_trip_is_exact() -> None:
    cfg = TrainingConfig(learning_rate=1e-7, weight_decay=0.1 + 0.2, min_lr_ratio=1 / 3,
                         wandb_tags=["x", "ü"], sample_prompt='He said "hi"\n', seed=0)
    again = TrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.weight_decay == 0.1 + 0.2
    assert TrainingConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.to_dict()["wandb_tags"] is not cfg.wandb_tags  # a copy, not a live reference


def test_from_dict_missing_keys_take_defaults() -> None:
    assert TrainingConfig.from_dict({"epochs": 7}) == TrainingConfig(epochs=7)


def test_from_dict_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_dict({"learnin_rate": 0.1, "zzzz": 1})
    text = str(info.value)
    assert "learnin_rate" in text and "did you mean 'learning_rate'" in text and "zzzz" in text
    with pytest.raises(ConfigError):
        TrainingConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_replace_returns_new_config_and_checks_names() -> None:
    cfg = TrainingConfig()
    other = cfg.replace(epochs=20, wandb_tags=("t",))
    assert other.epochs == 20 and other.wandb_tags == ["t"] and cfg.epochs == 5
    with pytest.raises(ConfigError, match="did you mean 'n_heads'"):
        cfg.replace(n_head=8)


def test_save_and_load(tmp_path: Path) -> None:
    cfg = TrainingConfig(run_name="run.1", learning_rate=1e-7)
    path = cfg.save(tmp_path / "configs")
    assert path == tmp_path / "configs" / "run.1.json"
    assert TrainingConfig.load(path) == cfg
    explicit = cfg.save(tmp_path / "elsewhere.json")
    assert explicit.name == "elsewhere.json" and TrainingConfig.load(explicit) == cfg
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["configs", "elsewhere.json",
                                                            "run.1.json"]


def test_save_rejects_a_run_name_that_is_not_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run_name"):
        TrainingConfig(run_name="../escape").save(tmp_path)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = TrainingConfig(epochs=3)
    old.save(tmp_path)

    def boom(src: object, dst: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ConfigError, match="disk vanished.*previous gpt-run.json is unchanged"):
        TrainingConfig(epochs=9).save(tmp_path)
    with pytest.raises(ConfigError, match="nothing was written"):
        TrainingConfig(run_name="fresh").save(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt-run.json"]  # no temp, no fresh
    assert TrainingConfig.load(tmp_path / "gpt-run.json") == old  # previous version intact


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json") as info:
        TrainingConfig.load(missing)
    assert "not found" in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"epochs": 3,,}')
    with pytest.raises(ConfigError, match="broken.json") as info:
        TrainingConfig.load(broken)
    assert "not valid JSON" in str(info.value)
    typo = tmp_path / "typo.json"
    typo.write_text('{"epochz": 3}')
    with pytest.raises(ConfigError, match="typo.json") as info:
        TrainingConfig.load(typo)
    assert "did you mean 'epochs'" in str(info.value)


def test_apply_overrides_parses_by_field_type() -> None:
    cfg = TrainingConfig().apply_overrides([
        "epochs=12", "learning_rate=1e-3", "compile=yes", "use_wandb=0", "wandb_tags=a, b,c",
        "run_name=my-run", "sample_prompt=Once upon=a time", "max_grad_norm=2",
    ])
    assert cfg.epochs == 12 and cfg.learning_rate == 1e-3
    assert cfg.compile is True and cfg.use_wandb is False
    assert cfg.wandb_tags == ["a", "b", "c"] and cfg.run_name == "my-run"
    assert cfg.sample_prompt == "Once upon=a time"
    assert cfg.max_grad_norm == 2.0 and isinstance(cfg.max_grad_norm, float)
    assert TrainingConfig.parse_override("wandb_tags=") == ("wandb_tags", [])


def test_apply_overrides_reports_every_bad_pair() -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig().apply_overrides(["epochs=ten", "compile=maybe", "lerning_rate=1",
                                          "no-equals-sign", "batch_size=2.5"])
    text = str(info.value)
    assert len(info.value.problems) == 5
    for needle in ("epochs", "compile", "did you mean 'learning_rate'", "no-equals-sign",
                   "batch_size"):
        assert needle in text


def test_str_card_is_compact_grouped_and_shows_mode() -> None:
    cfg = TrainingConfig.preset("balanced", run_name="card-test", use_wandb=True,
                                wandb_entity="me", wandb_tags=["t1"])
    text = str(cfg)
    lines = text.splitlines()
    assert 15 <= len(lines) <= 25
    assert "balanced" in lines[0] and "card-test" in lines[0]
    for needle in ("Run", "Optimisation", "Model", "Data", "Checkpoints", "Tracking",
                   "6 layers", "384", "0.0006", "me/transformer-training", "t1",
                   f"{cfg.tokens_per_step:,}"):
        assert needle in text, needle
    sections = [s for s, _, _ in cfg.summary_rows()]
    assert list(dict.fromkeys(sections)) == ["Run", "Optimisation", "Model", "Data",
                                             "Checkpoints", "Tracking"]


def test_html_card_escapes_values() -> None:
    cfg = TrainingConfig(sample_prompt="<script>x</script>", epochs=20)
    page = cfg._repr_html_()
    assert page.startswith("<table") and page.rstrip().endswith("</table>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "quality" in page and "Checkpoints" in page and "gpt-run" in page


def test_cards_render_invalid_configs() -> None:
    cfg = TrainingConfig(epochs="many", batch_size="abc", learning_rate=None,  # type: ignore
                         d_ff="x")  # type: ignore[arg-type]
    assert "many" in str(cfg) and "abc" in cfg._repr_html_()


def test_exported_models_are_not_held_to_the_builtin_shape_rules():
    from utils.training.training_config import TrainingConfig

    config = TrainingConfig(model_source="folder", model_ref="my_export", d_model=30, n_heads=4)
    config.validate()  # d_model % n_heads only constrains the built-in GPT
    assert "config.json" in str(config)


def test_bpe_vocab_too_small_is_caught_before_any_data_loads():
    from utils.training.training_config import ConfigError, TrainingConfig

    with pytest.raises(ConfigError, match="vocab_size = 100: must be >= 257"):
        TrainingConfig(data_source="local", data_path="x.txt", tokenizer="bpe",
                       vocab_size=100).validate()


# ---------------------------------------------------------------- a full disk


def test_save_on_a_full_disk_says_so_and_leaves_nothing_half_written(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """Used to be a raw ``OSError: [Errno 28]``."""
    import errno

    old = TrainingConfig(epochs=3)
    old.save(tmp_path)
    real_write_text = Path.write_text

    def fills_the_disk(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # half, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", fills_the_disk)
    with pytest.raises(ConfigError) as info:
        TrainingConfig(epochs=9).save(tmp_path)
    monkeypatch.undo()
    message = str(info.value)
    assert f"Cannot save training config {tmp_path / 'gpt-run.json'}" in message
    assert "disk is full" in message and "Free some space" in message
    assert "previous gpt-run.json is unchanged" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt-run.json"]  # no temp file
    assert TrainingConfig.load(tmp_path / "gpt-run.json") == old


# ---------------------------------------------------------------- what the hardware decides

GIB = 1 << 30


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_machine(memory: int = 16 * GIB):
    from utils.training.hardware import Machine

    return Machine(cuda=False, name="this machine", model_memory=memory, data_memory=memory)


def gpu_machine(memory: int = 15 * GIB, ram: int = 12 * GIB):
    from utils.training.hardware import Machine

    return Machine(cuda=True, name="the GPU (Tesla T4)", model_memory=memory, data_memory=ram,
                   model_memory_note="of memory in all")


def test_fp16_without_a_gpu_is_a_config_problem_listed_with_the_others() -> None:
    """fp16 on a CPU used to pass validate() and fail with a plain ValueError after the data
    had loaded (a traceback in the CLI)."""
    cfg = TrainingConfig(precision="fp16", learning_rate=-1.0)
    with pytest.raises(ConfigError) as info:
        cfg.validate(cpu_machine())
    assert len(info.value.problems) == 2
    fp16 = next(p for p in info.value.problems if p.startswith("precision = 'fp16'"))
    assert "needs a CUDA GPU" in fp16 and "'bf16' or 'fp32'" in fp16
    assert cfg.replace(learning_rate=1e-3).validate(gpu_machine()).precision == "fp16"
    assert cfg.replace(learning_rate=1e-3).validate() is not None  # no machine: not judged


def test_choose_precision_refuses_fp16_on_a_cpu_as_a_config_error() -> None:
    import torch

    from utils.training.hardware import choose_precision

    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        choose_precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(has_cuda(), reason="needs a machine without a GPU")
def test_fp16_on_a_cpu_is_one_clear_cli_line(tmp_path: Path, capsys) -> None:
    from utils.training.__main__ import main

    args = ["train", "--workspace", str(tmp_path / "ws"), "--no-progress"]
    for pair in ("run_name=fp16", "synthetic_tokens=6000", "vocab_size=16", "n_layers=1",
                 "n_heads=2", "d_model=32", "block_size=16", "epochs=1", "precision=fp16"):
        args += ["--set", pair]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.skipif(has_cuda(), reason="needs a machine without a GPU")
def test_fp16_on_a_cpu_is_refused_before_any_data_loads(tmp_path: Path, monkeypatch) -> None:
    from utils.training import run as pipeline

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the config was refused")

    monkeypatch.setattr(pipeline, "load_token_data", no_data)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        pipeline.prepare(TrainingConfig(precision="fp16"))


def test_a_model_too_big_for_memory_is_refused_with_the_figure_and_what_fits() -> None:
    """d_model=2**20 used to pass validate() and then fail allocating 13194139533312 bytes."""
    cfg = TrainingConfig(d_model=2**20)
    with pytest.raises(ConfigError) as info:
        cfg.validate(cpu_machine())
    (problem,) = info.value.problems
    assert problem.startswith("d_model = 1048576: training it needs about ")
    assert "TiB" in problem and "16.0 GiB of RAM available" in problem
    fits = int(problem.split("d_model = ")[-1].split()[0])
    assert 0 < fits < 2**20 and fits % cfg.n_heads == 0
    cfg.replace(d_model=fits).validate(cpu_machine())  # what it offers really passes
    with pytest.raises(ConfigError):
        cfg.replace(d_model=fits + cfg.n_heads).validate(cpu_machine())  # and is the largest

    with pytest.raises(ConfigError, match="the GPU \\(Tesla T4\\) has 15.0 GiB of memory in all"):
        cfg.validate(gpu_machine())


def test_activations_too_big_for_memory_blame_batch_size_and_keep_the_tokens_per_step() -> None:
    cfg = TrainingConfig(batch_size=4096, block_size=4096)
    with pytest.raises(ConfigError) as info:
        cfg.validate(gpu_machine())
    (problem,) = info.value.problems
    assert problem.startswith("batch_size = 4096: ")
    smaller = int(problem.split("; batch_size = ")[1].split()[0])
    accum = int(problem.split("grad_accum_steps = ")[1].split()[0])
    assert smaller * accum >= 4096
    cfg.replace(batch_size=smaller, grad_accum_steps=accum).validate(gpu_machine())


def test_synthetic_data_too_big_for_ram_is_refused_before_sampling() -> None:
    """synthetic_tokens=10**12 used to fail with MemoryError: 6.55 TiB."""
    cfg = TrainingConfig(synthetic_tokens=10**12)
    with pytest.raises(ConfigError) as info:
        cfg.validate(cpu_machine())
    (problem,) = info.value.problems
    assert problem.startswith("synthetic_tokens = 1000000000000: sampling that many needs ")
    assert "TiB" in problem
    most = int(problem.split("use at most ")[1].replace(",", ""))
    cfg.replace(synthetic_tokens=most).validate(cpu_machine())


def test_validate_for_hardware_judges_this_machine() -> None:
    from utils.training.hardware import detect_machine, validate_for_hardware

    machine = detect_machine()
    assert machine.model_memory and machine.data_memory and machine.data_memory > 2**20
    assert validate_for_hardware(TrainingConfig()).d_model == 256
    with pytest.raises(ConfigError, match="d_model = 1048576: training it needs"):
        validate_for_hardware(TrainingConfig(d_model=2**20))
    with pytest.raises(ConfigError, match="synthetic_tokens = 1000000000000000"):
        validate_for_hardware(TrainingConfig(synthetic_tokens=10**15))


@pytest.mark.parametrize("shape", [dict(), dict(n_layers=2, d_model=48, n_heads=3, d_ff=100),
                                   dict(tokenizer="byte", data_source="local", data_path="x")])
def test_parameter_estimate_matches_the_built_in_gpt(shape: dict) -> None:
    from utils.training.hardware import estimate_parameters
    from utils.training.models import model_from_config

    cfg = TrainingConfig(vocab_size=300, **shape)
    vocab = 257 if cfg.tokenizer == "byte" else cfg.vocab_size
    model = model_from_config(cfg, vocab)
    assert estimate_parameters(cfg) == sum(p.numel() for p in model.parameters())


def test_available_ram_falls_back_without_psutil(monkeypatch) -> None:
    import builtins

    from utils.training import hardware

    real_import = builtins.__import__

    def no_psutil(name: str, *args: object, **kwargs: object) -> object:
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    from_proc = hardware.available_ram()
    assert from_proc is not None and from_proc > 2**20
    monkeypatch.setattr(hardware, "Path", lambda *a: Path("/nonexistent/meminfo"))
    from_sysconf = hardware.available_ram()
    assert from_sysconf is not None and from_sysconf > 2**20
