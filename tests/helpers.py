"""What several test files share: simulated disconnects and the text a notebook printed."""

from __future__ import annotations

from utils.training import metric_names as M
from utils.training.callbacks import Callback


class StopAt(Callback):
    """Simulates a disconnect: ends the run after epoch ``epoch`` or raises at step ``step``."""

    def __init__(self, epoch=None, step=None):
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, metrics):
        if self.step is not None and metrics[M.STEP] == self.step:
            raise KeyboardInterrupt("simulated disconnect")

    def on_epoch_end(self, trainer, metrics):
        if self.epoch is not None and metrics[M.EPOCH] == self.epoch:
            trainer.should_stop = True


class Disconnect(StopAt):
    """A disconnect (KeyboardInterrupt) at optimizer step ``step``."""

    def __init__(self, step):
        super().__init__(step=step)


def outputs_text(nb, tracebacks: bool = False) -> str:
    """Everything the executed notebook showed, errors as ``ERROR name: value``."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                trace = "\n" + "\n".join(out.traceback) if tracebacks else ""
                parts.append(f"ERROR {out.ename}: {out.evalue}{trace}")
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)
