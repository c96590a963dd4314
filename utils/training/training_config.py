"""TrainingConfig: every knob of a run in one flat, JSON-round-trippable dataclass.

Construction never validates, so a notebook can build a config from form values and fix it
afterwards; :meth:`TrainingConfig.validate` then reports *every* problem at once, because a person
editing a Colab form would rather fix five fields in one go than rerun the cell five times.
Stdlib only (floor 1).
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .errors import PersonFacing
from .workspace import atomic_write

MODES = ("fast", "balanced", "quality")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MODEL_SOURCES = ("builtin", "gist", "folder")
DATA_SOURCES = ("huggingface", "drive", "upload", "local", "synthetic")
TOKENIZERS = ("bpe", "char", "byte")
SHARDINGS = ("ddp", "fsdp")
# Starts with a letter or digit so the saved "<run_name>.json" can never look like a temp file.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


# Fields that label or bookkeep a run rather than change what it learns: comparisons of runs
# and checks that a search study still measures the same thing leave them out.
NOT_HYPERPARAMETERS = frozenset({
    "run_name", "resume", "use_wandb", "wandb_project", "wandb_entity", "wandb_tags",
    "wandb_notes", "checkpoint_every_epochs", "checkpoint_every_minutes", "checkpoint_every_steps",
    "keep_checkpoints", "log_every_steps", "sharding",
    "sample_prompt", "sample_tokens",
})


class ConfigError(PersonFacing, ValueError):
    """A config a person got wrong; ``problems`` holds one line per problem, each with its fix."""

    def __init__(self, problems: str | Iterable[str], header: str = "Invalid training config"):
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.header = header
        n = len(self.problems)
        lines = [f"{header} ({n} problem{'' if n == 1 else 's'}):"]
        lines += [f"- {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str], str]]:
        # survive pickling (subprocess trials) without re-wrapping the message
        return type(self), (self.problems, self.header)


class HardwareCheck(Protocol):
    """What :meth:`TrainingConfig.validate` asks of the machine a run will use
    (``hardware.Machine``): this module imports no torch, so it cannot look for itself."""

    def problems(self, config: TrainingConfig, usable: Callable[..., bool]
                 ) -> list[tuple[str, str]]:
        """(field, why-with-fix) for what this machine cannot do; ``usable(*fields)`` says
        which fields have the right type and no problem yet, so they are safe to compute with."""
        ...


class _Range(NamedTuple):
    lo: float
    hi: float | None = None
    lo_open: bool = False  # True: value must be > lo rather than >= lo
    hi_open: bool = False
    hint: str = ""


_RANGES: dict[str, _Range] = {
    "seed": _Range(0, 2**32 - 1, hint="numpy only accepts seeds in this range"),
    "learning_rate": _Range(0, 1, lo_open=True),
    "min_lr_ratio": _Range(0, 1, hint="the cosine floor as a fraction of learning_rate"),
    "batch_size": _Range(1), "grad_accum_steps": _Range(1), "epochs": _Range(1),
    "max_steps": _Range(0, hint="optimizer steps; 0 = off, epochs decide"),
    "max_tokens": _Range(0, hint="training tokens; 0 = off, epochs decide"),
    "eval_every_steps": _Range(0, hint="optimizer steps; 0 = evaluate at each epoch end"),
    "checkpoint_every_steps": _Range(0, hint="optimizer steps; 0 = off"),
    "warmup_ratio": _Range(0, 0.5, hint="a fraction of all optimizer steps"),
    "weight_decay": _Range(0, 1), "max_grad_norm": _Range(0, hint="0 turns clipping off"),
    "adam_beta1": _Range(0, 1, hi_open=True), "adam_beta2": _Range(0, 1, hi_open=True),
    "eval_max_batches": _Range(0, hint="0 = the whole validation set"),
    "log_every_steps": _Range(1, hint="optimizer steps between reads of the loss (1 = every step)"),
    "early_stopping_patience": _Range(0, hint="0 = off"),
    "sample_tokens": _Range(0, hint="0 = no samples"),
    "checkpoint_every_epochs": _Range(1), "keep_checkpoints": _Range(1),
    "checkpoint_every_minutes": _Range(0, lo_open=True),
    "n_layers": _Range(1, 128), "n_heads": _Range(1), "d_model": _Range(8),
    "d_ff": _Range(0, hint="0 = 4 * d_model"), "dropout": _Range(0, 1, hi_open=True),
    "block_size": _Range(8, 65536), "vocab_size": _Range(2, 1_000_000),
    "val_fraction": _Range(0, 0.5, lo_open=True), "max_samples": _Range(0, hint="0 = all documents"),
    "synthetic_tokens": _Range(1000), "synthetic_order": _Range(1, 3),
}
_CHOICES = {"precision": PRECISIONS, "model_source": MODEL_SOURCES, "data_source": DATA_SOURCES,
            "sharding": SHARDINGS}
# (field, the field it depends on, values that make it required, how to fix it)
_REQUIRED_WHEN = [
    ("model_ref", "model_source", ("gist",), "give a Gist id or URL"),
    ("model_ref", "model_source", ("folder",), "give the folder holding model.py + config.json"),
    ("data_path", "data_source", ("drive", "local"), "give a file, folder or glob"),
    ("dataset_name", "data_source", ("huggingface",), "give a Hugging Face dataset name"),
    ("wandb_project", "use_wandb", (True,), "give a W&B project name"),
]
# The starting points the notebook's "mode" dropdown offers; each satisfies the epochs -> mode rule.
_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"epochs": 3, "n_layers": 4, "n_heads": 4, "d_model": 256, "block_size": 256,
             "batch_size": 32, "learning_rate": 1e-3, "dropout": 0.0},
    "balanced": {"epochs": 10, "n_layers": 6, "n_heads": 6, "d_model": 384, "block_size": 256,
                 "batch_size": 32, "learning_rate": 6e-4, "dropout": 0.1},
    "quality": {"epochs": 20, "n_layers": 8, "n_heads": 8, "d_model": 512, "block_size": 512,
                "batch_size": 16, "grad_accum_steps": 2, "learning_rate": 3e-4, "dropout": 0.1,
                "early_stopping_patience": 3},
}


def mode_for_epochs(epochs: int) -> str:
    """The one definition of the mode rule, shared by the property and the notebook's forms."""
    if epochs <= 5:
        return "fast"
    return "balanced" if epochs <= 15 else "quality"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _closest(name: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_problem(kind: str, v: Any) -> str | None:
    """Why ``v`` is not of ``kind`` (a field's annotation string), or None when it is."""
    got = f"got {type(v).__name__}"
    if kind == "int" and not _is_int(v):
        return f"must be a whole number, {got}" + (" (True/False are not numbers here)"
                                                  if isinstance(v, bool) else "")
    if kind == "float":
        if not _is_num(v):
            return f"must be a number, {got}"
        if not math.isfinite(v):
            return "must be a finite number"
    if kind == "bool" and not isinstance(v, bool):
        return f"must be True or False, {got}"
    if kind == "str" and not isinstance(v, str):
        return f"must be a string, {got}"
    if kind == "list[str]":
        if not isinstance(v, list):
            return f"must be a list of strings, {got}"
        odd = [t for t in v if not isinstance(t, str)]
        if odd:
            return f"must be a list of strings; {odd[0]!r} is a {type(odd[0]).__name__}"
    return None


def _range_text(r: _Range) -> str:
    parts = [f"{'>' if r.lo_open else '>='} {r.lo}"]
    if r.hi is not None:
        parts.append(f"{'<' if r.hi_open else '<='} {r.hi}")
    return "must be " + " and ".join(parts) + (f" ({r.hint})" if r.hint else "")


def _in_range(v: float, r: _Range) -> bool:
    lo_ok = v > r.lo if r.lo_open else v >= r.lo
    hi_ok = r.hi is None or (v < r.hi if r.hi_open else v <= r.hi)
    return lo_ok and hi_ok


def _fmt(v: Any, spec: str = "g") -> str:
    """Format numbers compactly but never raise: the summary must render invalid configs too."""
    return format(v, spec) if _is_num(v) else repr(v)


def _save_problem(target: Path, exc: OSError) -> str:
    kept = (f"the previous {target.name} is unchanged" if target.exists()
            else "nothing was written")
    folder = target.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full; {kept}. Free some space on {folder} (old checkpoints, "
                "datasets/ caches) or use another folder or workspace, then save again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{folder} is not writable ({exc.strerror}); {kept}. Use a folder you can "
                "write to (on Drive: check that it is still mounted)")
    # strerror, else the message itself: str() of an OSError given a filename after the fact
    # reads "[Errno None] None: ..."
    reason = exc.strerror or next((a for a in exc.args if isinstance(a, str)), str(exc))
    return (f"the file could not be written ({reason}); {kept}. Check the folder {folder} and "
            "the free space, then save again")


@dataclass
class TrainingConfig:
    """All settings of one training run; flat on purpose so forms, CLI and JSON map 1:1 to it."""

    # run
    run_name: str = "gpt-run"
    seed: int = 1337
    # optimisation
    learning_rate: float = 3e-4
    min_lr_ratio: float = 0.1
    batch_size: int = 16
    grad_accum_steps: int = 1
    epochs: int = 5  # with max_steps or max_tokens set, only a cap on the run's length
    max_steps: int = 0  # 0 = off
    max_tokens: int = 0  # 0 = off; counted as optimizer steps of tokens_per_step tokens
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    precision: str = "auto"
    compile: bool = False
    # Under torchrun: "ddp" keeps a whole model on every GPU; "fsdp" shards weights, gradients
    # and optimizer state over the ranks (a model too big for one GPU). One process ignores it.
    sharding: str = "ddp"
    # evaluation and stopping
    eval_every_steps: int = 0  # 0 = at each epoch end
    eval_max_batches: int = 0
    # Steps between host reads of the loss (progress bar, logged rows); rows stay one per step.
    log_every_steps: int = 10
    early_stopping_patience: int = 0
    sample_prompt: str = ""
    sample_tokens: int = 64
    # checkpoints
    checkpoint_every_epochs: int = 1
    checkpoint_every_minutes: float = 20.0
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    resume: str = "auto"
    # model
    model_source: str = "builtin"
    model_ref: str = ""
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 256
    d_ff: int = 0
    dropout: float = 0.0
    block_size: int = 256
    # data
    data_source: str = "synthetic"
    dataset_name: str = "wikitext"
    dataset_config: str = "wikitext-2-raw-v1"
    data_path: str = ""
    text_column: str = ""
    tokenizer: str = "byte"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    max_samples: int = 0
    synthetic_tokens: int = 200_000
    synthetic_order: int = 1
    # tracking
    use_wandb: bool = False
    wandb_project: str = "transformer-training"
    wandb_entity: str = ""
    wandb_tags: list[str] = field(default_factory=list)
    wandb_notes: str = ""

    def __post_init__(self) -> None:
        # Normalise only what is unambiguous; judging values is validate()'s job.
        tags = self.wandb_tags
        if tags is None:
            self.wandb_tags = []
        elif isinstance(tags, str):
            self.wandb_tags = [t.strip() for t in tags.split(",") if t.strip()]
        elif isinstance(tags, tuple):
            self.wandb_tags = list(tags)
        for f in fields(self):  # 1 -> 1.0 so the saved JSON has one spelling per field
            if f.type == "float" and _is_int(getattr(self, f.name)):
                setattr(self, f.name, float(getattr(self, f.name)))

    # ----------------------------------------------------------------- derived values
    @property
    def mode(self) -> str:
        return mode_for_epochs(self.epochs)

    @property
    def effective_d_ff(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.block_size

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def preset(cls, mode: str, **overrides: Any) -> TrainingConfig:
        """A sensible starting point per mode; explicit overrides win, even over ``epochs``."""
        key = str(mode).strip().lower()
        if key not in _PRESETS:
            raise ConfigError(f"mode = {mode!r}: must be one of {', '.join(MODES)}")
        return cls(**_PRESETS[key]).replace(**overrides)

    # ----------------------------------------------------------------- validation
    def validate(self, machine: HardwareCheck | None = None) -> TrainingConfig:
        """Raise one ConfigError listing every problem (with its fix); return self when clean.

        With ``machine`` (``hardware.validate_for_hardware`` passes the one at hand) it also
        lists what only the hardware decides, before any data is loaded: fp16 needs a CUDA
        GPU, and the model and the synthetic data must fit in memory."""
        found: dict[str, list[str]] = {}

        def bad(name: str, why: str) -> None:
            found.setdefault(name, []).append(f"{name} = {getattr(self, name)!r}: {why}")

        typed: set[str] = set()  # fields whose type is right, so value checks are safe
        for f in fields(self):
            why = _type_problem(f.type, getattr(self, f.name))
            if why:
                bad(f.name, why)
            else:
                typed.add(f.name)
        for name, r in _RANGES.items():
            if name in typed and not _in_range(getattr(self, name), r):
                bad(name, _range_text(r))
        for name, choices in _CHOICES.items():
            if name in typed and getattr(self, name) not in choices:
                bad(name, f"must be one of {', '.join(choices)}")

        def ok(*names: str) -> bool:  # right type and no problem yet: cross-checks are safe
            return all(n in typed and n not in found for n in names)

        if ok("run_name") and not RUN_NAME_RE.fullmatch(self.run_name):
            bad("run_name", "must be 1-64 characters from A-Z a-z 0-9 . _ - and start with a "
                "letter or digit (it names a folder, a file and a W&B run)")
        # Only the built-in GPT is shaped by these fields; an export brings its own.
        if self.model_source == "builtin" and ok("d_model", "n_heads") and self.d_model % self.n_heads:
            d, h = self.d_model, self.n_heads
            heads = min((k for k in range(1, d + 1) if d % k == 0), key=lambda k: (abs(k - h), k))
            bad("d_model", f"must be divisible by n_heads = {h} ({d} % {h} = {d % h}); "
                f"e.g. n_heads = {heads}, or d_model = {max(h, round(d / h) * h)}")
        for name, cond, values, fix in _REQUIRED_WHEN:
            if ok(name, cond) and getattr(self, cond) in values and not getattr(self, name).strip():
                bad(name, f"required when {cond} = {getattr(self, cond)!r}: {fix}")
        if ok("tokenizer") and self.tokenizer not in TOKENIZERS \
                and not self.tokenizer.lower().endswith(".json"):
            bad("tokenizer", f"must be one of {', '.join(TOKENIZERS)} or a path to a "
                "tokenizer.json file")
        if ok("tokenizer", "vocab_size") and self.tokenizer == "bpe" and self.vocab_size < 257 \
                and self.data_source != "synthetic":
            bad("vocab_size", "must be >= 257 for a byte-level BPE (256 byte symbols + EOS); a few "
                "thousand is typical")
        if ok("resume") and not self.resume.strip():
            bad("resume", "must be 'auto', 'never' or the path of a checkpoint file")
        # Synthetic text is split by tokens; fewer than one block leaves validation empty.
        if ok("data_source", "synthetic_tokens", "val_fraction", "block_size") \
                and self.data_source == "synthetic":
            need = math.ceil((self.block_size + 1) / self.val_fraction)
            if self.synthetic_tokens < need:
                bad("synthetic_tokens", f"too few for one validation block of block_size + 1 = "
                    f"{self.block_size + 1} tokens at val_fraction = {self.val_fraction}; "
                    f"use at least {need}")
        if machine is not None:
            for name, why in machine.problems(self, ok):
                bad(name, why)
        if found:
            order = self.field_names()
            raise ConfigError([p for n in sorted(found, key=order.index) for p in found[n]])
        return self

    # ----------------------------------------------------------------- dict / JSON / files
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Missing keys take defaults (older saved configs keep loading); unknown keys are errors
        because a misspelt key would otherwise be silently ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a JSON object of config fields, got {type(data).__name__}")
        cls._check_names(data)
        return cls(**data)

    @classmethod
    def _check_names(cls, names: Iterable[str]) -> None:
        valid = cls.field_names()
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ConfigError([f"{n!r}: unknown config field{_closest(n, valid)}" for n in unknown])

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/<run_name>.json`` (or exactly ``directory`` if it ends in .json),
        atomically, so a crash never leaves a truncated config that a resume would then trust."""
        target = Path(directory)
        if target.suffix.lower() != ".json":
            if not (isinstance(self.run_name, str) and RUN_NAME_RE.fullmatch(self.run_name)):
                raise ConfigError(f"run_name = {self.run_name!r}: cannot be used as a file name; "
                                  "use 1-64 characters from A-Z a-z 0-9 . _ -")
            target = target / f"{self.run_name}.json"
        text = self.to_json() + "\n"
        try:
            return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as exc:  # atomic_write has removed its temp file: nothing half-written
            raise ConfigError(_save_problem(target, exc), f"Cannot save training config {target}"
                              ) from exc

    @classmethod
    def load(cls, path: str | Path) -> TrainingConfig:
        """Read a saved config; every failure names the file, since users juggle several."""
        path = Path(path)
        header = f"Cannot load training config {path}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("file not found; check the path or save a config first",
                              header) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column "
                              f"{exc.colno}", header) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the file: {exc}", header) from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(exc.problems, header) from None

    # ----------------------------------------------------------------- changes
    def replace(self, **changes: Any) -> TrainingConfig:
        self._check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse_override(cls, pair: str) -> tuple[str, Any]:
        """Turn CLI ``key=value`` into a typed pair; the field's annotation decides the parse."""
        key, sep, raw = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{pair!r}: expected key=value, e.g. learning_rate=3e-4")
        kinds = {f.name: f.type for f in fields(cls)}
        if key not in kinds:
            raise ConfigError(f"{key!r}: unknown config field{_closest(key, kinds)}")
        kind, text = kinds[key], raw.strip()
        try:
            if kind == "int":
                return key, int(text)
            if kind == "float":
                return key, float(text)
        except ValueError:
            what = "a whole number" if kind == "int" else "a number"
            raise ConfigError(f"{key} = {raw!r}: must be {what}") from None
        if kind == "bool":
            if text.lower() in _TRUE | _FALSE:
                return key, text.lower() in _TRUE
            raise ConfigError(f"{key} = {raw!r}: must be true/false, yes/no, on/off or 1/0")
        if kind == "list[str]":
            return key, [t.strip() for t in raw.split(",") if t.strip()]
        return key, raw

    def apply_overrides(self, pairs: Iterable[str]) -> TrainingConfig:
        """Apply ``--set key=value`` pairs, reporting every bad pair at once; returns a new config."""
        changes: dict[str, Any] = {}
        problems: list[str] = []
        for pair in pairs:
            try:
                key, value = self.parse_override(pair)
            except ConfigError as exc:
                problems += exc.problems
            else:
                changes[key] = value
        if problems:
            raise ConfigError(problems, "Invalid --set override")
        return self.replace(**changes)

    # ----------------------------------------------------------------- summary card
    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(section, label, value) rows: the single definition of what the card shows, and how
        it is grouped, for both the terminal and the notebook. Never raises on bad values."""
        c = self
        ints = all(_is_int(v) for v in (c.batch_size, c.grad_accum_steps, c.block_size))
        batch = f"{c.batch_size} x {c.grad_accum_steps} accum x {c.block_size} tokens"
        batch += f" = {c.tokens_per_step:,} tokens/step" if ints else ""
        floor = "?"
        if _is_num(c.learning_rate) and _is_num(c.min_lr_ratio):
            floor = _fmt(c.learning_rate * c.min_lr_ratio, ".3g")
        lr = f"{_fmt(c.learning_rate, '.3g')} -> {floor} cosine, {_fmt(c.warmup_ratio, '.0%')} warmup"
        clip = _fmt(c.max_grad_norm) if c.max_grad_norm else "off"
        reg = f"weight decay {_fmt(c.weight_decay)}, dropout {_fmt(c.dropout)}, clip {clip}"
        evals = "whole val set" if not c.eval_max_batches else f"{c.eval_max_batches} val batches"
        when = f"every {_fmt(c.eval_every_steps, ',')} steps" if c.eval_every_steps else "each epoch"
        flat = "evaluations" if c.eval_every_steps else "epochs"
        evals = f"{when}, {evals}"
        stop = (f"early stop after {c.early_stopping_patience} flat {flat}"
                if c.early_stopping_patience else "no early stop")
        d_ff = _fmt(c.effective_d_ff) if _is_int(c.d_ff) and _is_int(c.d_model) else repr(c.d_ff)
        shape = f"{c.n_layers} layers x {c.d_model} d_model, {c.n_heads} heads, d_ff {d_ff}"
        if c.model_source != "builtin":  # an exported model brings its own sizes
            shape = f"from the export's config.json (context {c.block_size} tokens)"
        model = "built-in GPT" if c.model_source == "builtin" else f"{c.model_source} {c.model_ref!r}"
        if c.data_source == "synthetic":
            data = (f"synthetic, {_fmt(c.synthetic_tokens, ',')} tokens, alphabet "
                    f"{_fmt(c.vocab_size, ',')}, Markov order {c.synthetic_order}")
        elif c.data_source == "huggingface":
            data = f"huggingface {c.dataset_name}" + (f"/{c.dataset_config}" * bool(c.dataset_config))
        else:
            data = f"{c.data_source} {c.data_path!r}"
        data += f", column {c.text_column!r}" if c.text_column else ""
        tok = str(c.tokenizer) + (f", vocab {_fmt(c.vocab_size, ',')}" if c.tokenizer == "bpe" else "")
        if c.data_source == "synthetic":
            tok = "identity (the chain's tokens are the ids)"
        split = f"{_fmt(c.val_fraction, '.0%')} validation"
        split += f", first {_fmt(c.max_samples, ',')} documents" if c.max_samples else ""
        wandb = "off"
        if c.use_wandb:
            wandb = f"{c.wandb_entity}/{c.wandb_project}" if c.wandb_entity else str(c.wandb_project)
            wandb += f" [{', '.join(map(str, c.wandb_tags))}]" if c.wandb_tags else ""
        prompt = repr(c.sample_prompt) if c.sample_prompt else "<start>"
        samples = f"{c.sample_tokens} tokens from {prompt}" if c.sample_tokens else "off"
        try:
            mode = f"{self.mode} ({c.epochs} epochs)"
            if c.max_steps or c.max_tokens:
                budgets = [f"{_fmt(v, ',')} {unit}" for v, unit in
                           ((c.max_steps, "steps"), (c.max_tokens, "tokens")) if v]
                mode = f"{self.mode} ({' or '.join(budgets)}, at most {c.epochs} epochs)"
        except TypeError:
            mode = f"? (epochs = {c.epochs!r})"
        compiled = "on" if c.compile else "off"
        compiled += ", FSDP under torchrun" if c.sharding == "fsdp" else ""
        return [
            ("Run", "name", str(c.run_name)),
            ("Run", "mode", mode),
            ("Run", "seed", str(c.seed)),
            ("Run", "precision", f"{c.precision}, compile {compiled}"),
            ("Optimisation", "learning rate", lr),
            ("Optimisation", "batch", batch),
            ("Optimisation", "regularisation", reg),
            ("Optimisation", "adam betas", f"{_fmt(c.adam_beta1)}, {_fmt(c.adam_beta2)}"),
            ("Optimisation", "eval / stop", f"{evals}, {stop}"),
            ("Model", "source", model),
            ("Model", "shape", shape),
            ("Model", "context", f"{c.block_size} tokens"),
            ("Data", "source", data),
            ("Data", "tokenizer", tok),
            ("Data", "split", split),
            ("Checkpoints", "every", f"{c.checkpoint_every_epochs} epoch(s)"
                                     + (f", {_fmt(c.checkpoint_every_steps, ',')} steps"
                                        if c.checkpoint_every_steps else "")
                                     + f" or {_fmt(c.checkpoint_every_minutes)} min"),
            ("Checkpoints", "keep", f"{c.keep_checkpoints} newest + best"),
            ("Checkpoints", "resume", str(c.resume)),
            ("Tracking", "W&B", wandb),
            ("Tracking", "samples", samples),
        ]

    def _title(self) -> str:
        try:
            return f"TrainingConfig {self.run_name!r} - {self.mode} mode"
        except TypeError:
            return f"TrainingConfig {self.run_name!r}"

    def __str__(self) -> str:
        rows = self.summary_rows()
        w_sec = max(len(s) for s, _, _ in rows) + 2
        w_lab = max(len(n) for _, n, _ in rows) + 2
        lines, last = [self._title()], None
        for section, name, value in rows:
            lines.append(f"  {section if section != last else '':<{w_sec}}{name:<{w_lab}}{value}")
            last = section
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        out = ['<table class="training-config" style="text-align:left">',
               f"<caption style=\"text-align:left\"><b>{esc(self._title())}</b></caption>"]
        last = None
        for section, name, value in self.summary_rows():
            if section != last:
                out.append(f'<tr><th colspan="2" style="text-align:left">{esc(section)}</th></tr>')
                last = section
            out.append(f"<tr><td>{esc(name)}</td><td><code>{esc(value)}</code></td></tr>")
        out.append("</table>")
        return "\n".join(out)
