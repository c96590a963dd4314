"""Transformer Builder exports: Gists (served from 127.0.0.1, never the network) and folders."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from utils.training.data import make_dataloaders
from utils.training.models import (
    GPT,
    ConfigNamespace,
    ExportedModel,
    ModelLoadError,
    load_exported_model,
    model_from_config,
    parse_source,
)
from utils.training.trainer import Trainer

GIST_ID = "0123456789abcdef0123456789abcdef"
REV_A = "a" * 40
REV_B = "b" * 40
VOCAB = 32

# The smallest useful model: embedding -> linear head, d=16. {init} and {forward} vary per style.
TEMPLATE = """\
import torch
import torch.nn as nn
{prelude}

class Tiny(nn.Module):
{init}

{forward}
"""
KWARGS_INIT = """\
    def __init__(self, vocab_size, d_model=16, block_size=64):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.head = nn.Linear(d_model, vocab_size)"""
PLAIN_FORWARD = """\
    def forward(self, input_ids):
        return self.head(self.emb(input_ids))"""
BASE_CONFIG = {"vocab_size": VOCAB, "d_model": 16, "block_size": 64, "framework": "pytorch"}


def model_py(init: str = KWARGS_INIT, forward: str = PLAIN_FORWARD, prelude: str = "") -> str:
    return TEMPLATE.format(init=init, forward=forward, prelude=prelude)


def write_export(folder: Path, code: str | None, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if code is not None:
        (folder / "model.py").write_text(code)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_steps(model: torch.nn.Module, vocab: int = VOCAB, steps: int = 8) -> tuple[float, float]:
    """A few AdamW steps on one fixed batch: the loss must fall if gradients reach the weights."""
    torch.manual_seed(0)
    batch = torch.randint(0, vocab, (4, 9))
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(steps):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


# ----------------------------------------------------------------------------- a fake GitHub

def gist_json(files: dict[str, str], version: str = REV_A, truncated: tuple[str, ...] = ()) -> bytes:
    return json.dumps({
        "id": GIST_ID,
        "files": {n: {"filename": n, "content": c, "size": len(c), "truncated": n in truncated}
                  for n, c in files.items()},
        "history": [{"version": version}],
    }).encode()


@pytest.fixture
def github():
    """An HTTP server on 127.0.0.1; tests fill ``routes`` with path -> (status, headers, body)."""
    routes: dict[str, tuple] = {}
    hits: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append((self.path, dict(self.headers)))
            status, headers, body, *delay = routes.get(
                self.path, (404, {}, b'{"message": "Not Found"}'))
            if delay:
                time.sleep(delay[0])
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", routes=routes, hits=hits)
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_url():
    """A local port nobody listens on: 'GitHub cannot be reached', instantly and offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve_export(github, code: str, config: dict, path: str = f"/gists/{GIST_ID}", **kw) -> None:
    github.routes[path] = (200, {"Content-Type": "application/json"},
                           gist_json({"model.py": code, "config.json": json.dumps(config),
                                      "README.md": "notes"}, **kw))


def load_gist(github, tmp_path, source=GIST_ID, **kw):
    kw.setdefault("trust", True)
    kw.setdefault("verbose", False)
    return load_exported_model(source, api_base=github.url, cache_dir=tmp_path / "cache",
                               timeout=2.0, **kw)


# ----------------------------------------------------------------------------- Gists

def test_gist_loads_trains_with_the_trainer_and_checkpoints(github, tmp_path, tiny_config,
                                                            workspace, capsys):
    serve_export(github, model_py(), {**BASE_CONFIG, "vocab_size": 999, "model_name": "Tiny"})
    config = tiny_config(model_source="gist", model_ref=f"https://gist.github.com/someone/{GIST_ID}",
                         epochs=1)
    model = model_from_config(config, 16, trust=True,
                              cache_dir=tmp_path / "cache", api_base=github.url)
    out = capsys.readouterr().out
    assert isinstance(model, ExportedModel)
    # Request shape: the API path, JSON accept header and a User-Agent (GitHub requires one).
    path, headers = github.hits[0]
    assert path == f"/gists/{GIST_ID}"
    assert headers["Accept"] == "application/vnd.github+json" and headers["User-Agent"]
    # What is about to run was shown first: source, revision, every file's SHA-256, the class.
    code_hash = hashlib.sha256(model_py().encode()).hexdigest()
    assert GIST_ID in out and REV_A in out and code_hash in out and "class: Tiny" in out
    assert "vocab_size 999 -> 16" in out
    assert model.vocab_size == 16 and model.block_size == 64
    assert model.source_info["sha256"]["model.py"] == code_hash
    assert model.source_info["class"] == "Tiny" and model.source_info["revision"] == REV_A
    cached = tmp_path / "cache" / "gists" / f"{GIST_ID}-{REV_A}"
    assert (cached / "model.py").read_text() == model_py() and not (cached / "README.md").exists()

    ids = torch.arange(3000) * 5 % 16  # a bigram pattern this embedding->head model can learn
    train_loader, val_loader = make_dataloaders(ids[:2500], ids[2500:], config.block_size,
                                                config.batch_size, config.seed)
    trainer = Trainer(config, model, train_loader, val_loader, workspace=workspace,
                      progress=False, verbose=False)
    result = trainer.fit()
    assert result.global_step > 0 and result.best_val_loss < math.log(16)
    saved = torch.load(result.last_checkpoint, weights_only=False)["model"]
    assert set(saved) == {"inner.emb.weight", "inner.head.weight", "inner.head.bias"}


def test_gist_without_trust_is_refused_before_any_code_runs(github, tmp_path, capsys):
    marker = tmp_path / "model_py_ran"
    code = model_py(prelude=f"open({str(marker)!r}, 'w').write('ran')")
    serve_export(github, code, BASE_CONFIG)
    with pytest.raises(ModelLoadError) as info:
        load_gist(github, tmp_path, trust=False, verbose=True)
    message = str(info.value)
    assert not marker.exists(), "model.py was executed without trust=True"
    assert "trust=True" in message and "trust this code" in message
    digest = hashlib.sha256(code.encode()).hexdigest()
    assert digest in message and "Tiny" in message
    assert digest in capsys.readouterr().out  # printed too, before refusing


def test_gist_url_with_revision_requests_that_revision_and_is_cached_forever(github, tmp_path):
    serve_export(github, model_py(), BASE_CONFIG, path=f"/gists/{GIST_ID}/{REV_B}", version=REV_B)
    url = f"https://gist.github.com/someone/{GIST_ID}/{REV_B}"
    load_gist(github, tmp_path, url)
    assert [p for p, _ in github.hits] == [f"/gists/{GIST_ID}/{REV_B}"]
    github.routes.clear()  # GitHub is gone: a pinned revision must not be asked for again
    model = load_gist(github, tmp_path, GIST_ID, revision=REV_B, vocab_size=VOCAB)
    assert len(github.hits) == 1 and model.source_info["revision"] == REV_B


def test_unpinned_gist_refetches_and_falls_back_to_cache_when_offline(github, dead_url, tmp_path,
                                                                     capsys):
    serve_export(github, model_py(), BASE_CONFIG)
    load_gist(github, tmp_path)
    load_gist(github, tmp_path)
    assert len(github.hits) == 2  # unpinned: the author may have changed it
    model = load_exported_model(GIST_ID, trust=True, api_base=dead_url, cache_dir=tmp_path / "cache",
                                timeout=2.0, verbose=False)
    out = capsys.readouterr().out
    assert "could not fetch" in out and "cached" in out  # loud even with verbose=False
    assert model.source_info["revision"] == REV_A


def test_gist_404(github, tmp_path):
    with pytest.raises(ModelLoadError, match=r"not found \(is it secret/deleted\? check the id\)"):
        load_gist(github, tmp_path)


def test_gist_rate_limited(github, tmp_path):
    reset = int(time.time()) + 600
    github.routes[f"/gists/{GIST_ID}"] = (403, {"X-RateLimit-Remaining": "0",
                                                "X-RateLimit-Reset": str(reset)}, b"{}")
    with pytest.raises(ModelLoadError) as info:
        load_gist(github, tmp_path)
    message = str(info.value)
    assert "rate limit" in message and "folder" in message
    assert time.strftime("%H:%M", time.localtime(reset)) in message
    assert "about 10 min" in message


def test_gist_forbidden_without_rate_limit_is_not_called_a_rate_limit(github, tmp_path):
    github.routes[f"/gists/{GIST_ID}"] = (403, {"X-RateLimit-Remaining": "41"}, b"{}")
    with pytest.raises(ModelLoadError, match="HTTP 403") as info:
        load_gist(github, tmp_path)
    assert "rate limit" not in str(info.value)


def test_gist_truncated_file_is_refused(github, tmp_path):
    serve_export(github, model_py(), BASE_CONFIG, truncated=("model.py",))
    with pytest.raises(ModelLoadError, match="model.py .* too large for the GitHub API"):
        load_gist(github, tmp_path)


def test_gist_bad_json(github, tmp_path):
    github.routes[f"/gists/{GIST_ID}"] = (200, {}, b"<html>captive portal</html>")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_gist(github, tmp_path)


def test_gist_without_model_py_lists_its_files(github, tmp_path):
    github.routes[f"/gists/{GIST_ID}"] = (200, {}, gist_json({"config.json": "{}", "a.txt": ""}))
    with pytest.raises(ModelLoadError, match=r"no model.py \(it holds: a.txt, config.json\)"):
        load_gist(github, tmp_path)


def test_unreachable_github_names_the_offline_alternative(dead_url, tmp_path):
    with pytest.raises(ModelLoadError, match="Cannot reach GitHub.*folder"):
        load_exported_model(GIST_ID, trust=True, api_base=dead_url, cache_dir=tmp_path,
                            verbose=False)


def test_slow_github_times_out(github, tmp_path):
    serve_export(github, model_py(), BASE_CONFIG)
    github.routes[f"/gists/{GIST_ID}"] += (1.5,)  # answer after 1.5 s
    with pytest.raises(ModelLoadError, match="Cannot reach GitHub.*0.3 s"):
        load_exported_model(GIST_ID, trust=True, api_base=github.url, cache_dir=tmp_path,
                            timeout=0.3, verbose=False)


@pytest.mark.parametrize("source, expected", [
    (GIST_ID, ("gist", GIST_ID, "")),
    (f"https://gist.github.com/user/{GIST_ID}", ("gist", GIST_ID, "")),
    (f"gist.github.com/{GIST_ID}", ("gist", GIST_ID, "")),
    (f"https://gist.github.com/user/{GIST_ID}/{REV_A}", ("gist", GIST_ID, REV_A)),
    (f"https://gist.githubusercontent.com/u/{GIST_ID}/raw/{REV_B}/model.py",
     ("gist", GIST_ID, REV_B)),
])
def test_parse_source(source, expected):
    parsed = parse_source(source)
    assert (parsed.kind, parsed.gist_id, parsed.revision) == expected


def test_parse_source_rejects_nonsense(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Gist"):
        parse_source(str(tmp_path / "no-such-folder"))
    with pytest.raises(ModelLoadError, match="not a Gist URL"):
        parse_source("https://example.com/x/y")
    with pytest.raises(ModelLoadError, match="not a Gist revision"):
        parse_source(GIST_ID, revision="main")
    (tmp_path / "abc123").mkdir()  # an existing folder wins over an id-looking name
    assert parse_source(str(tmp_path / "abc123")).kind == "folder"


# ----------------------------------------------------------------------------- folder styles

STYLES = {
    "kwargs constructor": (KWARGS_INIT, PLAIN_FORWARD, ""),
    "**kwargs constructor, input x, tuple output": ("""\
    def __init__(self, **kw):
        super().__init__()
        self.emb = nn.Embedding(kw["n_vocab"], kw["d_model"])
        self.head = nn.Linear(kw["d_model"], kw["n_vocab"])""", """\
    def forward(self, x, targets=None):
        return self.head(self.emb(x)), None""", ""),
    "config object, input tokens, dict output": ("""\
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, config["d_model"])
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=config.get("bias", True))""",
        """\
    def forward(self, tokens):
        return {"logits": self.head(self.emb(tokens)), "loss": None}""", ""),
    "dataclass config, .logits output": ("""\
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)""", """\
    def forward(self, idx):
        return Output(logits=self.head(self.emb(idx)))""", """\
from dataclasses import dataclass
from types import SimpleNamespace as Output


@dataclass
class TinyConfig:
    vocab_size: int
    d_model: int = 8"""),
    "no-argument constructor, dict without logits key": ("""\
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.head = nn.Linear(16, 32)""", """\
    def forward(self, input_ids):
        return {"scores": self.head(self.emb(input_ids))}""", ""),
    "keyword-only forward": (KWARGS_INIT, """\
    def forward(self, *, input_ids, attention_mask=None):
        return self.head(self.emb(input_ids))""", ""),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_folder_export_styles_train(style, tmp_path):
    init, forward, prelude = STYLES[style]
    code = "from __future__ import annotations\n" + model_py(init, forward, prelude)
    config = {**BASE_CONFIG, "n_vocab": 99, "vocab_size": 7}  # both get the tokenizer's VOCAB
    folder = write_export(tmp_path / "export", code, config)
    model = load_exported_model(str(folder), vocab_size=VOCAB, verbose=False)
    assert model.vocab_size == VOCAB and model.source_info["class"] == "Tiny"
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.inner.parameters()}
    first, last = train_steps(model)
    assert last < first - 0.2, f"{style}: loss did not fall ({first:.3f} -> {last:.3f})"
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, VOCAB)


def test_the_class_nobody_else_uses_is_the_model(tmp_path):
    code = textwrap.dedent("""\
        import torch.nn as nn

        class Base(nn.Module):
            pass

        class Block(Base):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)

            def forward(self, x):
                return x + self.fc(x)

        class Model(nn.Module):
            def __init__(self, vocab_size, d_model):
                super().__init__()
                self.emb = nn.Embedding(vocab_size, d_model)
                self.blocks = nn.ModuleList(Block(d_model) for _ in range(2))
                self.head = nn.Linear(d_model, vocab_size)

            def forward(self, input_ids):
                x = self.emb(input_ids)
                for block in self.blocks:
                    x = block(x)
                return self.head(x)
        """)
    folder = write_export(tmp_path / "e", code, {**BASE_CONFIG, "model_name": "my fancy model"})
    model = load_exported_model(folder, vocab_size=VOCAB, verbose=False)
    assert type(model.inner).__name__ == "Model"
    assert model.block_size == 64
    train_steps(model)


def test_architectures_key_optional_config_param_and_a_sibling_file(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "tiny_export_layers_7f3a.py").write_text("D_MODEL = 16\n")
    init = """\
    def __init__(self, config=None):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, D_MODEL)
        self.head = nn.Linear(D_MODEL, config.vocab_size)"""
    code = model_py(init=init, prelude="from tiny_export_layers_7f3a import D_MODEL") + \
        "\n\nclass Unused(nn.Module):\n    pass\n"
    write_export(folder, code, {"d_model": 16, "architectures": ["Tiny"]})
    model = load_exported_model(str(folder), vocab_size=VOCAB, verbose=False)
    # `config=None` still gets config.json (plus the tokenizer's vocab_size it lacked).
    assert model.vocab_size == VOCAB and model.source_info["class"] == "Tiny"
    assert set(model.source_info["sha256"]) == {"config.json", "model.py",
                                                 "tiny_export_layers_7f3a.py"}


def test_config_namespace_reads_like_an_object_and_a_dict():
    cfg = ConfigNamespace.from_dict({"d": 16, "attn": {"heads": 2}})
    assert cfg.d == cfg["d"] == cfg.get("d") == 16 and cfg.get("x", 3) == 3
    assert cfg.attn.heads == cfg["attn"]["heads"] == 2 and "d" in cfg and "x" not in cfg
    assert dict(**cfg)["d"] == 16 and cfg.to_dict() == {"d": 16, "attn": {"heads": 2}}
    with pytest.raises(KeyError):
        cfg["missing"]


# ----------------------------------------------------------------------------- bad exports

def load_folder(tmp_path, code, config=BASE_CONFIG, vocab_size=VOCAB):
    folder = write_export(tmp_path / "bad", code, config)
    return load_exported_model(str(folder), vocab_size=vocab_size, verbose=False)


def test_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ModelLoadError, match=r"syntax error on line 3: 'def broken\(:'"):
        load_folder(tmp_path, "import torch\n\ndef broken(:\n    pass\n")


def test_no_module_class(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no nn.Module class \(classes found: Helper\)"):
        load_folder(tmp_path, "class Helper:\n    pass\n")


def test_two_candidate_classes_are_listed(tmp_path):
    code = model_py() + "\n\nclass Other(nn.Module):\n    pass\n"
    with pytest.raises(ModelLoadError, match=r"candidates are Tiny, Other.*\"model_name\""):
        load_folder(tmp_path, code)
    # ... and model_name settles it.
    model = load_folder(tmp_path, code, {**BASE_CONFIG, "model_name": "Tiny"})
    assert type(model.inner).__name__ == "Tiny"


def test_class_name_that_does_not_exist(tmp_path):
    with pytest.raises(ModelLoadError, match=r"class_name = 'Nope'.*\(it has: Tiny\)"):
        load_folder(tmp_path, model_py(), {**BASE_CONFIG, "class_name": "Nope"})


def test_wrong_output_shape(tmp_path):
    forward = "    def forward(self, input_ids):\n        return self.head(self.emb(input_ids))[:, -1]"
    with pytest.raises(ModelLoadError, match=r"outputs shape \[1, 32\] for input \[1, 8\]"):
        load_folder(tmp_path, model_py(forward=forward))


def test_last_position_only_output_gets_a_hint(tmp_path):
    forward = ("    def forward(self, input_ids):\n"
               "        return self.head(self.emb(input_ids))[:, [-1], :]")
    with pytest.raises(ModelLoadError, match="only the last position"):
        load_folder(tmp_path, model_py(forward=forward))


def test_vocab_mismatch_names_both_numbers(tmp_path):
    no_arg = "    def __init__(self):\n        super().__init__()\n" \
             "        self.emb = nn.Embedding(40, 16)\n        self.head = nn.Linear(16, 40)"
    with pytest.raises(ModelLoadError, match=r"outputs vocab 40 but the tokenizer has 32 tokens: "
                                             r"set vocab_size in config.json to 32"):
        load_folder(tmp_path, model_py(init=no_arg), {"d_model": 16})
    # config.json already says 32 and model.py ignores it: say that instead.
    init = KWARGS_INIT.replace("self.head = nn.Linear(d_model, vocab_size)",
                               "self.head = nn.Linear(d_model, 40)")
    with pytest.raises(ModelLoadError, match=r"outputs vocab 40 but the tokenizer has 32 tokens: "
                                             r"model.py ignores config.json's vocab_size"):
        load_folder(tmp_path, model_py(init=init))


def test_missing_config_json(tmp_path):
    folder = write_export(tmp_path / "e", model_py())
    with pytest.raises(ModelLoadError, match=r"has no config.json \(it holds: model.py\)"):
        load_exported_model(str(folder), verbose=False)


def test_bad_config_json(tmp_path):
    folder = write_export(tmp_path / "e", model_py())
    (folder / "config.json").write_text('{"vocab_size": 32,}')
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON \(line 1"):
        load_exported_model(str(folder), verbose=False)


def test_missing_package_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="needs 'no_such_package_xyz'.*pip install"):
        load_folder(tmp_path, model_py(prelude="import no_such_package_xyz"))


def test_constructor_failure_gives_the_reason_and_line(tmp_path):
    init = "    def __init__(self, vocab_size):\n        super().__init__()\n        raise RuntimeError('boom')"
    with pytest.raises(ModelLoadError, match=r"Building Tiny .* failed \(model.py line 8\): "
                                             r"RuntimeError: boom"):
        load_folder(tmp_path, model_py(init=init))


def test_missing_constructor_argument_is_named(tmp_path):
    init = KWARGS_INIT.replace("d_model=16", "n_layers")
    with pytest.raises(ModelLoadError, match="needs n_layers, which config.json does not have"):
        load_folder(tmp_path, model_py(init=init))


# ----------------------------------------------------------------------------- model_from_config

def test_model_from_config_builtin_and_folder(tmp_path, tiny_config):
    assert isinstance(model_from_config(tiny_config(), 16), GPT)
    folder = write_export(tmp_path / "e", model_py(), BASE_CONFIG)
    model = model_from_config(tiny_config(model_source="folder", model_ref=str(folder)), 16,
                              verbose=False)
    assert isinstance(model, ExportedModel) and model.vocab_size == 16


def test_model_from_config_refuses_contradictions(tmp_path, tiny_config):
    folder = write_export(tmp_path / "e", model_py(), BASE_CONFIG)
    with pytest.raises(ModelLoadError, match="is a local folder: set model_source = 'folder'"):
        model_from_config(tiny_config(model_source="gist", model_ref=str(folder)), 16)
    with pytest.raises(ModelLoadError, match="is a Gist id/URL"):
        model_from_config(tiny_config(model_source="folder", model_ref=GIST_ID), 16)
    short = write_export(tmp_path / "s", model_py(), {**BASE_CONFIG, "block_size": 8})
    with pytest.raises(ModelLoadError, match="block_size = 16 is longer than .* 8 tokens"):
        model_from_config(tiny_config(model_source="folder", model_ref=str(short)), 16,
                          verbose=False)


def test_model_from_config_gist_needs_trust(github, tmp_path, tiny_config):
    serve_export(github, model_py(), BASE_CONFIG)
    config = tiny_config(model_source="gist", model_ref=GIST_ID)
    with pytest.raises(ModelLoadError, match="trust=True"):
        model_from_config(config, 16, cache_dir=tmp_path, api_base=github.url, verbose=False)


# ----------------------------------------------------------------------------- someone else's folder

def test_a_folder_that_requires_trust_is_refused_and_shows_its_hashes(tmp_path, capsys):
    marker = tmp_path / "model_py_ran"
    code = model_py(prelude=f"open({str(marker)!r}, 'w').write('ran')")
    folder = write_export(tmp_path / "bundle" / "model_source", code, BASE_CONFIG)
    digest = hashlib.sha256(code.encode()).hexdigest()
    with pytest.raises(ModelLoadError, match="pass trust=True") as info:
        load_exported_model(str(folder), vocab_size=VOCAB, require_trust=True, verbose=False)
    assert not marker.exists() and digest in str(info.value)
    capsys.readouterr()
    model = load_exported_model(str(folder), vocab_size=VOCAB, require_trust=True, trust=True,
                                verbose=False)
    assert marker.exists() and model.vocab_size == VOCAB
    assert digest in capsys.readouterr().out  # shown even when quiet


# ----------------------------------------------------------------------------- plain-torch recipe

def test_readme_recipe_rebuilds_every_style_with_plain_torch(tmp_path):
    """The lines a bundle's README shows, run from an empty folder without this library, build
    each style of export, load its weights and sample exactly what our model samples."""
    from utils.training.data import IdentityTokenizer
    from utils.training.models.standalone import torch_snippet
    from utils.training.models.weights import save_weights

    scripts, expected = [], []
    for i, (init, forward, prelude) in enumerate(STYLES.values()):
        bundle = tmp_path / f"bundle{i}"
        code = "from __future__ import annotations\n" + model_py(init, forward, prelude)
        config = {**BASE_CONFIG, "n_vocab": 99, "vocab_size": 7}
        source = write_export(bundle / "model_source", code, config)
        torch.manual_seed(i)
        model = load_exported_model(str(source), vocab_size=VOCAB, verbose=False).eval()
        save_weights(bundle / "model.safetensors", model.inner.state_dict())
        IdentityTokenizer(VOCAB).save(bundle / "tokenizer.json")
        script = torch_snippet(model.source_info["recipe"], config, bundle=str(bundle),
                               source_dir="model_source", weights="model.safetensors",
                               tokenizer="tokenizer.json", prompt="3 1", start_id=0,
                               block_size=6, max_new_tokens=10)
        assert "utils" not in script
        scripts.append(tmp_path / f"snippet{i}.py")
        scripts[-1].write_text(script)
        torch.manual_seed(0)  # the script's sampling loop, with our model
        ids = [3, 1]
        with torch.no_grad():
            for _ in range(10):
                probs = torch.softmax(model(torch.tensor([ids[-6:]]))[0, -1] / 0.8, dim=-1)
                ids.append(int(torch.multinomial(probs, 1)))
        expected.append(" ".join(map(str, ids)))

    driver = ("import importlib.util, runpy, sys\n"
              "assert importlib.util.find_spec('utils') is None, 'utils is importable'\n"
              "for path in sys.argv[1:]:\n"
              "    runpy.run_path(path, run_name='__main__')\n")
    stranger = tmp_path / "elsewhere"
    stranger.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", driver, *map(str, scripts)], cwd=stranger,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == expected
