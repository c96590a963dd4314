"""Tokens on disk, not in RAM: memory and time of the token cache at sizes beyond a toy corpus.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tokens.py [--text-mb 2000] [--e2e-mb 200]
        [--tokens 1e9] [--steps 8] [--rounds 4] [--dir /tmp] [--quick]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_tokens.py --txt-mb 100 1000
        [--txt-tokenizer bpe8192] [--txt-whole-up-to 100]

(a) Tokenizing a generated text file (paragraphs of real Python source, read by `datasets` as
    one row per paragraph into a memory-mapped Arrow file, split 99/1 as a source without a
    validation split is) with a byte-level BPE tokenizer.json into a token cache: peak RSS
    above the process's import baseline, for the tokenizing stage (`encode_split` into the
    cache) and, on a smaller .jsonl, for `load_token_data` end to end (sources included).
(b) Iterating the training loader over a cache of --tokens uint16 ids (written chunk by chunk
    with numpy through the cache writer; 2 bytes per token on disk): RssAnon (the process's
    own memory; the memmap's pages are RssFile and belong to the OS page cache) above the
    import baseline, sampled every 1,000 batches over a whole epoch.
(c) Reopening each cache in a fresh process: seconds (`load_token_data` on the folder).
(e) With --txt-mb only: a plain .txt file end to end (`load_token_data`), read in pieces and,
    up to --txt-whole-up-to MB, whole as before pieces: seconds, peak RSS and RssAnon.
(d) A training step of GPT 4x256, block 256, batch 16 (bf16 autocast where the CPU has it),
    its batch gathered from the 1 B-token memmap against in-RAM blocks (the old path: int64
    ids packed into a contiguous [N, 257] tensor). Contenders alternate (ABBA), medians and
    their ratio are reported, and the gather alone is timed over many batches, which is the
    precise figure: the step-time ratio is at the mercy of whatever else the machine runs.

Every part runs in its own process so every baseline is a fresh import; the parent prints the
figures and a JSON line with all of them. Files go under --dir and are deleted at the end.
Nothing is asserted: timings and memory belong here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


# --------------------------------------------------------------------------- measuring


def status() -> dict[str, int]:
    """Bytes of this process's memory, from /proc/self/status."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class AnonPeak:
    """The highest RssAnon a thread sees reading /proc/self/status every 10 ms: the kernel keeps
    a peak only for the whole RSS (VmHWM), which counts a memory map's file pages too."""

    def __enter__(self) -> AnonPeak:
        self.peak, self._stop = status()["RssAnon"], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status()["RssAnon"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status()["RssAnon"])


def child(part: str, **kwargs: object) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    args = [sys.executable, __file__, "--child", part, "--child-args", json.dumps(kwargs)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"part {part} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- making data


def paragraphs(rng: np.random.Generator, lines: list[str], n_bytes: int):
    """Paragraphs of 1-40 random non-blank lines of real source, chunk by chunk."""
    made = 0
    while made < n_bytes:
        idx = rng.integers(0, len(lines), size=200_000)
        cuts = np.cumsum(rng.integers(1, 41, size=20_000))
        cuts = cuts[cuts < idx.size]
        picked = [lines[i] for i in idx]
        chunk = ["\n".join(picked[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
        made += sum(len(p) + 2 for p in chunk)
        yield chunk


def source_lines() -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tokenize import stdlib_corpus

    lines = []
    for path in stdlib_corpus(6 * MB):
        lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def write_text(path: Path, mb: float, jsonl: bool, seed: int) -> int:
    rng, lines = np.random.default_rng(seed), source_lines()
    with open(path, "w", encoding="utf-8") as f:
        for chunk in paragraphs(rng, lines, int(mb * MB)):
            if jsonl:
                f.write("".join(json.dumps({"text": p}) + "\n" for p in chunk))
            else:
                f.write("\n\n".join(chunk) + "\n\n")
    return path.stat().st_size


def make_tokenizer(path: Path) -> None:
    from utils.training.data import build_tokenizer
    from utils.training.training_config import TrainingConfig

    lines = source_lines()
    texts = ["\n".join(lines[i : i + 50]) for i in range(0, len(lines), 50)]
    tok = build_tokenizer(TrainingConfig(tokenizer="bpe", vocab_size=8192), [texts])
    tok.save(path)


def make_big_cache(parent: Path, n_tokens: int, vocab: int) -> Path:
    """A cache folder of n_tokens uniform random ids (< vocab), written 16 M ids at a time."""
    from utils.training.data import IdentityTokenizer
    from utils.training.data.cache import split_path, stream_dtype, write_cache, write_ids

    tok = IdentityTokenizer(vocab)
    dtype = stream_dtype(vocab)

    def chunks(n: int, seed: int):
        rng = np.random.default_rng(seed)
        for lo in range(0, n, 1 << 24):
            yield rng.integers(0, vocab, size=min(1 << 24, n - lo), dtype=dtype)

    def fill(folder: Path) -> None:
        write_ids(chunks(n_tokens, 0), split_path(folder, "train"), dtype)
        write_ids(chunks(n_tokens // 100, 1), split_path(folder, "validation"), dtype)

    return write_cache(parent, f"random-{n_tokens}", fill, tok, {"source": "bench_tokens.py"})


# --------------------------------------------------------------------------- the parts


def part_tokenize(text: str, tokenizer: str, cache: str) -> dict:
    """(a) the tokenizing stage: the text file streamed by `datasets` (one row per paragraph,
    the first 1,000 for validation) -> encode_split -> a cache folder."""
    import datasets

    from utils.training.data import load_tokenizer
    from utils.training.data.cache import SPLITS, encode_split, split_path, write_cache

    datasets.disable_progress_bars()
    base = status()
    reset_peak()
    tok = load_tokenizer(tokenizer)
    rows = datasets.load_dataset("text", data_files=text, sample_by="paragraph", split="train",
                                 streaming=True)
    splits = {"train": rows.skip(1000), "validation": rows.take(1000)}
    started = time.perf_counter()

    def fill(folder: Path) -> None:
        for split in SPLITS:
            encode_split(splits[split], tok, split_path(folder, split))

    with AnonPeak() as anon:
        folder = write_cache(Path(cache), "bpe8192", fill, tok, {"source": text})
    end = status()
    meta = json.loads((folder / "meta.json").read_text())
    return {"seconds": time.perf_counter() - started, "peak": end["VmHWM"] - base["VmRSS"],
            "anon_peak": anon.peak - base["RssAnon"], "base_rss": base["VmRSS"],
            "tokens": meta["train_tokens"] + meta["validation_tokens"], "folder": str(folder)}


def _measured_load(config, ws) -> dict:
    """``load_token_data`` into the workspace's cache: seconds, peak RSS and RssAnon, tokens."""
    from utils.training.data import load_token_data

    base = status()
    reset_peak()
    started = time.perf_counter()
    with AnonPeak() as anon:
        data = load_token_data(config, ws)
    return {"seconds": time.perf_counter() - started, "peak": status()["VmHWM"] - base["VmRSS"],
            "anon_peak": anon.peak - base["RssAnon"],
            "tokens": int(data.train_ids.size + data.val_ids.size)}


def part_end_to_end(jsonl: str, tokenizer: str, workspace: str) -> dict:
    """(a) load_token_data on a .jsonl file: sources (read by `datasets` into a memory-mapped
    Arrow file, a seeded 99/1 split), tokenizing and the cache together."""
    import datasets

    from utils.training.training_config import TrainingConfig
    from utils.training.workspace import Workspace

    datasets.disable_progress_bars()
    ws = Workspace.setup(workspace, mount_drive=False, verbose=False)
    config = TrainingConfig(data_source="local", data_path=jsonl, tokenizer=tokenizer,
                            val_fraction=0.01)
    return _measured_load(config, ws)


def part_loader(folder: str, block: int, batch: int) -> dict:
    """(b) and (c): reopen a 1 B-token cache, then a whole epoch of training batches."""
    import torch  # noqa: F401 - part of the import baseline, as in a training run

    from utils.training.data import load_token_data, make_dataloaders
    from utils.training.training_config import TrainingConfig

    base = status()
    started = time.perf_counter()
    data = load_token_data(TrainingConfig(data_source="local", data_path=folder))
    reopen = time.perf_counter() - started
    train, val = make_dataloaders(data.train_ids, data.val_ids, block, batch, seed=0)
    n = 0
    with AnonPeak() as anon:
        started = time.perf_counter()
        for _ in train:
            n += 1
        epoch_s = time.perf_counter() - started
        for _ in val:
            pass
    end = status()
    return {"reopen_s": reopen, "tokens": int(data.train_ids.size), "batches": n,
            "epoch_s": epoch_s, "anon_peak": anon.peak - base["RssAnon"],
            "rss_file_end": end["RssFile"], "base_anon": base["RssAnon"]}


def part_reopen(folders: list[str]) -> dict:
    from utils.training.data import load_token_data
    from utils.training.training_config import TrainingConfig

    times = {}
    for folder in folders:
        started = time.perf_counter()
        load_token_data(TrainingConfig(data_source="local", data_path=folder))
        times[folder] = time.perf_counter() - started
    return times


def part_step(folder: str, steps: int, rounds: int, ram_tokens: int) -> dict:
    """(d) step time with batches from the memmap against batches from in-RAM blocks."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from utils.training.data import ResumableBatchSampler, load_token_data, make_dataloaders
    from utils.training.hardware import choose_precision
    from utils.training.models import build_model
    from utils.training.training_config import TrainingConfig

    data = load_token_data(TrainingConfig(data_source="local", data_path=folder))
    block, batch = 256, 16
    memmap_loader, _ = make_dataloaders(data.train_ids, data.val_ids, block, batch, seed=0)

    # The old in-RAM path: int64 ids and a contiguous copy of every block.
    ids = torch.from_numpy(np.asarray(data.train_ids[:ram_tokens]).astype(np.int64))
    n_blocks = (ids.numel() - 1) // block
    blocks = ids[: n_blocks * block + 1].unfold(0, block + 1, block).contiguous()

    class InRam(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return blocks.shape[0]

        def __getitem__(self, idx):
            rows = blocks[idx]
            return rows[..., :-1].contiguous(), rows[..., 1:].contiguous()

    ram_loader = DataLoader(InRam(), batch_size=None, num_workers=0,
                            sampler=ResumableBatchSampler(n_blocks, batch, 0, drop_last=True),
                            generator=torch.Generator())

    config = TrainingConfig(n_layers=4, n_heads=4, d_model=256, block_size=block,
                            vocab_size=data.tokenizer.vocab_size, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(config, data.tokenizer.vocab_size).train()
    precision = choose_precision("auto", torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    streams = {"in-RAM blocks": iter(ram_loader), "memmap": iter(memmap_loader)}

    def step(batches) -> float:
        started = time.perf_counter()
        x, y = next(batches)  # the gather is part of the step, as in the trainer
        with torch.autocast("cpu", dtype=precision.autocast_dtype,
                            enabled=precision.autocast_dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - started

    for batches in streams.values():
        step(batches)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in streams}
    order = list(streams)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):  # ABBA
            times[name] += [step(streams[name]) for _ in range(steps)]

    gather: dict[str, float] = {}
    for name, loader in (("in-RAM blocks", ram_loader), ("memmap", memmap_loader)):
        it = iter(loader)
        reps = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(400):
                next(it)
            reps.append((time.perf_counter() - started) / 400)
        gather[name] = statistics.median(reps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"precision": precision.name, "medians": medians, "gather": gather,
            "ratio": medians["memmap"] / medians["in-RAM blocks"],
            "steps_each": steps * rounds, "gather_overhead": (gather["memmap"] - gather[
                "in-RAM blocks"]) / medians["in-RAM blocks"]}


def part_txt(text: str, tokenizer: str, workspace: str, whole: bool) -> dict:
    """(e) load_token_data end to end on one plain .txt file: read in pieces (text.py), or
    `whole` as before pieces (one Python string; the path kept for small text)."""
    import datasets

    from utils.training.data import text as text_module
    from utils.training.training_config import TrainingConfig
    from utils.training.workspace import Workspace

    datasets.disable_progress_bars()
    if whole:
        text_module.TEXT_IN_MEMORY_BYTES = 1 << 62
    ws = Workspace.setup(workspace, mount_drive=False, verbose=False)
    config = TrainingConfig(data_source="local", data_path=text, tokenizer=tokenizer,
                            val_fraction=0.01)
    return _measured_load(config, ws)


PARTS = {"tokenize": part_tokenize, "e2e": part_end_to_end, "loader": part_loader,
         "reopen": part_reopen, "step": part_step, "txt": part_txt}


def run_txt(work: Path, sizes: list[float], tokenizer: str, whole_up_to: float) -> list[dict]:
    """(e) for each size in MB: one generated .txt (paragraphs of stdlib source) in pieces, and
    whole (the old path) too up to `whole_up_to` MB. `tokenizer` "bpe8192" is a trained BPE."""
    if tokenizer == "bpe8192":
        tokenizer = str(work / "bpe8192.json")
        if not Path(tokenizer).is_file():
            make_tokenizer(Path(tokenizer))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    results = []
    for mb in sizes:
        text = work / f"plain-{mb:g}.txt"
        n_bytes = write_text(text, mb, jsonl=False, seed=2)
        for whole in ([False, True] if mb <= whole_up_to else [False]):
            got = child("txt", text=str(text), tokenizer=tokenizer, workspace=str(work / "ws"),
                        whole=whole)
            shutil.rmtree(work / "hf", ignore_errors=True)
            shutil.rmtree(work / "ws", ignore_errors=True)
            got.update(text_bytes=n_bytes, whole=whole, tokenizer=Path(tokenizer).stem)
            results.append(got)
            print(f"(e) {n_bytes / 1e6:,.0f} MB .txt, {'whole' if whole else 'in pieces'}, "
                  f"{Path(tokenizer).stem}: {got['seconds']:.1f} s, {got['tokens']:,} tokens; "
                  f"peak RSS {got['peak'] / MB:.0f} MB above the import baseline, RssAnon "
                  f"peak {got['anon_peak'] / MB:.0f} MB")
        text.unlink()
    return results


# --------------------------------------------------------------------------- the parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-mb", type=float, default=2000)
    parser.add_argument("--e2e-mb", type=float, default=200)
    parser.add_argument("--tokens", type=float, default=1e9)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--quick", action="store_true",
                        help="the reduced size `make bench` runs (about a minute): --text-mb 40 "
                             "--e2e-mb 16 --tokens 1e8 --steps 8 --rounds 2")
    parser.add_argument("--txt-mb", type=float, nargs="*", default=[],
                        help="(e) only: plain .txt files of these sizes through load_token_data")
    parser.add_argument("--txt-tokenizer", default="byte", help="byte, or bpe8192 (trained here)")
    parser.add_argument("--txt-whole-up-to", type=float, default=0,
                        help="(e) also reads files up to this many MB whole, the old way")
    parser.add_argument("--child")
    parser.add_argument("--child-args", default="{}")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(PARTS[args.child](**json.loads(args.child_args))))
        return
    if args.quick:
        args.text_mb, args.e2e_mb, args.tokens, args.steps, args.rounds = 40, 16, 1e8, 8, 2

    import datasets

    datasets.disable_progress_bars()  # our bars follow datasets' switch
    work = Path(args.dir) / f"bench-tokens-{os.getpid()}"
    work.mkdir(parents=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    if args.txt_mb:
        try:
            results["txt"] = run_txt(work, args.txt_mb, args.txt_tokenizer, args.txt_whole_up_to)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results))
        return
    free = shutil.disk_usage(work).free
    print(f"{os.cpu_count()} CPUs; {free / 1e9:.0f} GB free under {work}")
    try:
        # (b), (c), (d) on a cache of random ids (vocab 256: the shape FACTS.md timed).
        started = time.perf_counter()
        big = make_big_cache(work / "caches", int(args.tokens), 256)
        size = sum(p.stat().st_size for p in big.iterdir())
        print(f"wrote a cache of {int(args.tokens):,} tokens ({size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - started:.0f} s")
        loader = child("loader", folder=str(big), block=256, batch=16)
        results["loader"] = loader
        print(f"(b) a whole epoch of training batches (block 256, batch 16): "
              f"{loader['batches']:,} batches in {loader['epoch_s']:.0f} s; RssAnon peak "
              f"{loader['anon_peak'] / MB:.0f} MB above the import baseline "
              f"({loader['base_anon'] / MB:.0f} MB); RssFile at the end "
              f"{loader['rss_file_end'] / MB:.0f} MB (page cache)")
        step = child("step", folder=str(big), steps=args.steps, rounds=args.rounds,
                     ram_tokens=20_000_000)
        results["step"] = step
        m, g = step["medians"], step["gather"]
        print(f"(d) step, GPT 4x256 block 256 batch 16 ({step['precision']}), "
              f"{step['steps_each']} steps each, ABBA: in-RAM {m['in-RAM blocks']:.3f} s, "
              f"memmap {m['memmap']:.3f} s, ratio {step['ratio']:.4f}; gather alone: in-RAM "
              f"{g['in-RAM blocks'] * 1e6:.0f} us, memmap {g['memmap'] * 1e6:.0f} us per batch "
              f"= {step['gather_overhead']:+.3%} of a step")

        # (a) tokenizing.
        tok = work / "bpe8192.json"
        make_tokenizer(tok)
        text = work / "corpus.txt"
        started = time.perf_counter()
        n_bytes = write_text(text, args.text_mb, jsonl=False, seed=0)
        print(f"generated {n_bytes / 1e9:.2f} GB of text in {time.perf_counter() - started:.0f} s")
        tokenized = child("tokenize", text=str(text), tokenizer=str(tok),
                          cache=str(work / "caches"))
        tokenized["text_bytes"] = n_bytes
        results["tokenize"] = tokenized
        text.unlink()
        print(f"(a) tokenizing {n_bytes / 1e9:.2f} GB of text (streamed, one row per paragraph) "
              f"into a cache: {tokenized['seconds']:.0f} s, {tokenized['tokens']:,} tokens; peak "
              f"RSS {tokenized['peak'] / MB:.0f} MB above the import baseline of "
              f"{tokenized['base_rss'] / MB:.0f} MB (RssAnon peak "
              f"{tokenized['anon_peak'] / MB:.0f} MB above it)")
        os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
        results["e2e"] = []
        for mb in (args.e2e_mb / 4, args.e2e_mb):
            jsonl = work / f"corpus-{mb:g}.jsonl"
            n_json = write_text(jsonl, mb, jsonl=True, seed=1)
            e2e = child("e2e", jsonl=str(jsonl), tokenizer=str(tok), workspace=str(work / "ws"))
            e2e["jsonl_bytes"] = n_json
            results["e2e"].append(e2e)
            jsonl.unlink()
            shutil.rmtree(work / "hf", ignore_errors=True)
            print(f"(a) load_token_data end to end on {n_json / 1e6:.0f} MB of .jsonl: "
                  f"{e2e['seconds']:.0f} s, {e2e['tokens']:,} tokens; peak RSS "
                  f"{e2e['peak'] / MB:.0f} MB above the import baseline (RssAnon peak "
                  f"{e2e['anon_peak'] / MB:.0f} MB)")

        folders = [str(big), tokenized["folder"], *map(str, (work / "ws" / "datasets").glob("*"))]
        reopen = child("reopen", folders=[f for f in folders if Path(f, "meta.json").is_file()])
        results["reopen"] = reopen
        print("(c) reopening: " + ", ".join(f"{Path(f).name} {s:.3f} s" for f, s in reopen.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
