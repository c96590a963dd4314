"""What a hyperparameter search may vary, and how: parsed, checked and applied to a TrainingConfig.

A space is a plain dict so a notebook cell can write it inline:
``{"learning_rate": (1e-4, 1e-2, "log"), "batch_size": [16, 32], "dropout": (0.0, 0.2)}``.
A tuple is a range (``(low, high)`` or ``(low, high, "log")``), a list is a set of choices, and
``None`` leaves a parameter out (handy with ``{**default_space(), "dropout": None}``). Every value
a trial could draw is checked against ``TrainingConfig.validate()`` *before* the first trial, so a
bad bound fails in seconds with its fix instead of as trial 7's crash an hour later.
Floor 6 helper of ``search.py``; imports the config only.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import PersonFacing
from .training_config import ConfigError, TrainingConfig

# Fields a search may vary: numbers that change how well the model learns. Not here on purpose:
# seed (noise, not a setting), epochs (use trial_epochs), data and checkpoint settings (they
# change what is measured, not how well it is learned) and vocab_size (set by the tokenizer).
SEARCHABLE = (
    "learning_rate", "min_lr_ratio", "batch_size", "grad_accum_steps", "warmup_ratio",
    "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "dropout",
    "n_layers", "n_heads", "d_model", "d_ff", "block_size",
)
DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": (1e-4, 3e-3, "log"),
    "batch_size": [8, 16, 32, 64],
    "warmup_ratio": (0.0, 0.2),
    "weight_decay": (0.0, 0.2),
    "dropout": (0.0, 0.3),
}
DEPTH_SPACE: dict[str, Any] = {"n_layers": (2, 8)}
# Widths that many head counts divide; n_heads is lowered where it does not (see apply_params).
WIDTH_SPACE: dict[str, Any] = {"d_model": [128, 192, 256, 384, 512]}
_KINDS = {f.name: f.type for f in fields(TrainingConfig)}


class SearchSpaceError(PersonFacing, ValueError):
    """A search space a person got wrong; ``problems`` holds one line per problem with its fix."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        lines = [f"Invalid search space ({n} problem{'' if n == 1 else 's'}):"]
        super().__init__("\n".join(lines + [f"- {p}" for p in self.problems]))

    def __reduce__(self) -> tuple[type[SearchSpaceError], tuple[list[str]]]:
        return type(self), (self.problems,)  # survives pickling into a worker process


class SearchError(PersonFacing, ValueError):
    """A search that cannot run or has no answer yet; the message says what to do."""


def default_space(depth: bool = False, width: bool = False) -> dict[str, Any]:
    """The default space; ``depth`` adds n_layers, ``width`` adds d_model (n_heads follows)."""
    space = dict(DEFAULT_SPACE)
    if depth:
        space.update(DEPTH_SPACE)
    if width:
        space.update(WIDTH_SPACE)
    return space


@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range (optionally log-scaled) or a list of choices."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def candidates(self) -> tuple[Any, ...]:
        """The values that decide whether every draw is valid (ranges are convex)."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        scale = "log " if self.log else ""
        return f"{self.name} {scale}[{self.low:g}, {self.high:g}]"


def _is_number(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _parse_one(name: str, spec: Any) -> tuple[Param | None, list[str]]:
    kind = _KINDS[name]
    what = "whole numbers" if kind == "int" else "numbers"
    if isinstance(spec, list):
        if not spec:
            return None, [f"{name}: no choices given; list at least one value, e.g. "
                          f"{name}: {list(DEFAULT_SPACE.get(name, [1, 2]))!r}"]
        bad = [v for v in spec if not _is_number(v, kind)]
        if bad:
            return None, [f"{name}: choice {bad[0]!r} is not allowed; {name} takes {what}"]
        return Param(name, "choice", choices=tuple(dict.fromkeys(spec))), []
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        low, high = spec[0], spec[1]
        scale = spec[2] if len(spec) == 3 else "linear"
        problems = []
        if scale not in ("log", "linear"):
            problems.append(f"{name}: the third item of a range is 'log' or 'linear', "
                            f"not {scale!r}")
        for label, value in (("low", low), ("high", high)):
            if not _is_number(value, kind):
                problems.append(f"{name}: {label} = {value!r} is not allowed; {name} takes {what}")
        if problems:
            return None, problems
        if low > high:
            return None, [f"{name}: low {low:g} is greater than high {high:g}; swap them: "
                          f"({high!r}, {low!r}{', ' + repr(scale) if len(spec) == 3 else ''})"]
        if low == high:
            return None, [f"{name}: low and high are both {low:g}, so there is nothing to "
                          f"search; set {name}={low!r} on the config and leave it out of the space"]
        if scale == "log" and low <= 0:
            return None, [f"{name}: a log-scaled range needs low > 0, got {low:g}; use a small "
                          f"positive low such as {high / 100:g}, or drop 'log'"]
        return Param(name, kind, low=low, high=high, log=scale == "log"), []
    return None, [f"{name}: {spec!r} is not a range or a list of choices; write (low, high), "
                  f"(low, high, 'log') or [choice, choice, ...]"]


def parse_space(space: Mapping[str, Any] | None, config: TrainingConfig) -> dict[str, Param]:
    """Check a space against ``config`` and return its parameters; raise listing every problem.

    ``None`` means the default space. The checks run each bound and each choice through
    :func:`apply_params` and ``TrainingConfig.validate()``, so the search can never draw a config
    that training would reject.
    """
    if space is None:
        space = DEFAULT_SPACE
    if not isinstance(space, Mapping):
        raise SearchSpaceError(f"space must be a dict of field -> range or choices, got "
                               f"{type(space).__name__}; e.g. {{'learning_rate': (1e-4, 1e-2, 'log')}}")
    problems: list[str] = []
    params: dict[str, Param] = {}
    for name, spec in space.items():
        if spec is None:
            continue
        if name not in SEARCHABLE:
            close = difflib.get_close_matches(str(name), SEARCHABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            why = ("is a TrainingConfig field that a search cannot vary" if name in _KINDS
                   else "is not a TrainingConfig field")
            problems.append(f"{name!r} {why}{hint}; searchable fields: {', '.join(SEARCHABLE)}")
            continue
        param, found = _parse_one(name, spec)
        problems += found
        if param is not None:
            params[name] = param
    if problems:
        raise SearchSpaceError(problems)
    if not params:
        raise SearchSpaceError("the space is empty, so there is nothing to search; give at least "
                               "one field, e.g. {'learning_rate': (1e-4, 1e-2, 'log')}")
    for param in params.values():
        for value in param.candidates():
            candidate, _ = apply_params(config, {param.name: value})
            try:
                candidate.validate()
            except ConfigError as exc:
                problems += [f"{param.name} = {value!r} would give an invalid config: {p}"
                             for p in exc.problems]
    if problems:
        raise SearchSpaceError(problems)
    return params


def fit_heads(d_model: int, n_heads: int) -> int:
    """The largest head count <= ``n_heads`` that divides ``d_model`` (attention needs it)."""
    return max(h for h in range(1, max(1, n_heads) + 1) if d_model % h == 0)


def apply_params(config: TrainingConfig, values: Mapping[str, Any]) -> tuple[TrainingConfig, dict]:
    """``config`` with ``values`` applied, and the changes actually made.

    When the width or head count changes, n_heads is lowered to the nearest divisor of d_model
    and the returned changes say so: a trial's config must be exactly reproducible from them.
    """
    changes = dict(values)
    if "d_model" in changes or "n_heads" in changes:
        d_model = int(changes.get("d_model", config.d_model))
        n_heads = int(changes.get("n_heads", config.n_heads))
        heads = fit_heads(d_model, n_heads)
        if heads != config.n_heads or "n_heads" in changes:
            changes["n_heads"] = heads
    return config.replace(**changes), changes
