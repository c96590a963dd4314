"""The callback protocol: how tracking, plotting and search hook into the loop.

It lives on the lowest floor (no imports) so that the tracker, the plotter and the search can
implement it without importing the trainer, and the trainer never imports them.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks into the loop. Override what you need; every method is optional.

    Metric dicts use the names in ``metric_names``. ``state_dict``/``load_state_dict`` let a
    callback's own history ride along in checkpoints, so a resumed run's tracker carries on where
    it stopped. Set ``trainer.should_stop = True`` to end training after the current epoch.
    """

    def on_train_start(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        """An evaluation on the step cadence (``eval_every_steps``): its optimizer step, epoch
        in progress, val metrics and the train loss since the previous one. With the epoch
        cadence the evaluation is part of ``on_epoch_end``'s metrics instead."""

    def on_train_end(self, trainer: Any, result: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
