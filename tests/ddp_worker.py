"""`python -m utils.training` as torchrun starts it, with what tests/test_distributed.py checks.

Run as ``torchrun ... tests/ddp_worker.py train --config F --workspace W`` (or plain ``python``
for one process). Driven by environment variables, all optional:
- DDP_AUDIT=DIR: on ranks other than 0, every file-system write under W is recorded (Python's
  audit hooks see each open for writing, mkdir, rename, remove and SQLite connection) and the
  list is written to DIR/rank<R>.txt at exit.
- DDP_DUMP=DIR: after training, each rank saves its model's parameters to DIR/rank<R>.pt
  (under FSDP, its shard of each).
- DDP_FAIL_AT_STEP=N with DDP_FAIL_RANK=R (or "all"): that rank raises at optimizer step N.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.training import trainer as trainer_module  # noqa: E402
from utils.training.__main__ import main  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))
_WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate",
                 "shutil.copyfile", "shutil.rmtree", "sqlite3.connect")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _workspace(argv: list[str]) -> Path:
    return Path(argv[argv.index("--workspace") + 1]).resolve()


def _audit(root: Path, out: Path) -> None:
    writes: list[str] = []

    def inside(path: object) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)  # type: ignore[arg-type]
        except (TypeError, ValueError, OSError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and inside(args[0]):
                writes.append(f"{event} {args[0]} {mode!r}")
        elif event in _WRITE_EVENTS and (
                inside(args[0]) or (event == "os.rename" and inside(args[1]))):
            writes.append(f"{event} {args[0]}")

    def report() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{RANK}.txt").write_text("\n".join(writes), encoding="utf-8")

    atexit.register(report)
    sys.addaudithook(hook)


def _instrument() -> None:
    fit, step = trainer_module.Trainer.fit, trainer_module.Trainer._optimizer_step
    dump = os.environ.get("DDP_DUMP")
    fail_at = int(os.environ.get("DDP_FAIL_AT_STEP", "0"))
    fail_rank = os.environ.get("DDP_FAIL_RANK", "all")

    def fit_and_dump(self):
        result = fit(self)
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            weights = {name: value.to_local() if hasattr(value, "to_local") else value
                       for name, value in self.raw_model.state_dict().items()}  # FSDP: a shard
            torch.save(weights, Path(dump) / f"rank{RANK}.pt")
        return result

    def failing_step(self, group):
        if self.global_step + 1 == fail_at and fail_rank in ("all", str(RANK)):
            raise RuntimeError(f"injected failure at step {fail_at}")
        return step(self, group)

    trainer_module.Trainer.fit = fit_and_dump
    trainer_module.Trainer._optimizer_step = failing_step


if __name__ == "__main__":
    argv = sys.argv[1:]
    if os.environ.get("DDP_AUDIT") and RANK != 0:
        _audit(_workspace(argv), Path(os.environ["DDP_AUDIT"]))
    _instrument()
    sys.exit(main(argv))
