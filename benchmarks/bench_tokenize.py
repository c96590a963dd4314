"""How long tokenizing takes: BPE training, encoding about 5 MB, and a cached reload.

The corpus is the Python standard library's own .py files outside test/ (about 5 MB on every
machine with Python), copied to a temp folder so the full pipeline (local source -> BPE ->
batched encode -> token file) runs on it exactly as a notebook run would.

    .venv/bin/python benchmarks/bench_tokenize.py [--mb 5] [--vocab 8192] [--repeats 3]

Prints medians over --repeats runs; nothing is asserted (timings belong here, not in tests).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, disable_progress_bars

from utils.training.data import build_tokenizer, load_token_data
from utils.training.data.cache import encode_split
from utils.training.training_config import TrainingConfig
from utils.training.workspace import Workspace


def stdlib_corpus(limit_bytes: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    picked, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("test", "site-packages") or "tests" in rel:
            continue
        try:
            size = len(path.read_text(encoding="utf-8").encode())
        except (UnicodeDecodeError, OSError):
            continue
        picked.append(path)
        total += size
        if total >= limit_bytes:
            break
    return picked


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    disable_progress_bars()

    files = stdlib_corpus(int(args.mb * 1e6))
    texts = [f.read_text(encoding="utf-8") for f in files]
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts)} stdlib files, {n_bytes / 1e6:.2f} MB")
    config = TrainingConfig(data_source="local", tokenizer="bpe", vocab_size=args.vocab, seed=0)
    ds = Dataset.from_dict({"text": texts})

    t = median_time(lambda: build_tokenizer(config, texts), args.repeats)
    print(f"train byte-level BPE, vocab {args.vocab}: {t:.2f} s")
    with contextlib.redirect_stdout(io.StringIO()):
        bpe = build_tokenizer(config, texts)
    ids = Path(tempfile.mkdtemp(prefix="bench-ids-")) / "ids.bin"  # the token file, as a cache
    n_tokens = encode_split(ds, bpe, ids, "bench")
    t = median_time(lambda: encode_split(ds, bpe, ids, "bench"), args.repeats)
    print(f"encode {n_bytes / 1e6:.1f} MB with BPE (batches of encode_batch to the token file, "
          "one row per file): "
          f"{t:.2f} s, {n_tokens:,} tokens, {n_bytes / n_tokens:.2f} bytes/token")
    one = Dataset.from_dict({"text": ["".join(texts)]})
    t = median_time(lambda: encode_split(one, bpe, ids, "bench"), args.repeats)
    print(f"encode the same text as a single document (split into pieces): {t:.2f} s")
    t = median_time(lambda: bpe.core.encode("".join(texts)), 1)
    print(f"  for comparison, tokenizers' encode() of it as one string: {t:.2f} s")
    for kind in ("byte", "char"):
        tok = build_tokenizer(config.replace(tokenizer=kind), texts)
        t = median_time(lambda tok=tok: encode_split(ds, tok, ids, "bench"), args.repeats)
        print(f"encode with the {kind} tokenizer: {t:.2f} s")
    shutil.rmtree(ids.parent)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, f in enumerate(files):
            shutil.copyfile(f, corpus / f"{i:05d}_{f.name}")
        config = config.replace(data_path=str(corpus))
        ws = Workspace.setup(Path(tmp) / "ws", mount_drive=False, verbose=False)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            data = load_token_data(config, ws)
        cold = time.perf_counter() - start
        print(f"load_token_data, first run (read, train BPE, tokenize, cache): {cold:.2f} s, "
              f"{len(data.train_ids):,} train / {len(data.val_ids):,} val tokens")
        t = median_time(lambda: load_token_data(config, ws), args.repeats)
        print(f"load_token_data, cached: {t:.3f} s")


if __name__ == "__main__":
    main()
