"""Transformer Builder exports (``model.py`` + ``config.json``) as models the trainer can train.

Exports come in many shapes: constructors that take keyword arguments, a config object or
nothing; ``forward`` methods whose input is called ``x`` or ``tokens`` and that return a tensor, a
tuple, a dict or an object with ``.logits``. :class:`ExportedModel` hides all of that behind one
contract - token ids [B, T] in, logits [B, T, vocab] out - checked once by a dry run at load time,
so a wrong export fails in the model cell with its reason instead of deep inside the loop.

Loading a Gist runs a stranger's code, so everything the user needs to judge it (where it came
from, each file's SHA-256, the class that will be built) is found *statically* and shown before a
single line runs, and a Gist is refused unless the caller passes ``trust=True``. The same gate,
with the same display, guards any other folder of someone else's code (``require_trust``: a model
bundle someone sent you).

How the model was built and called (the constructor style, the input keyword, where the logits
are in the output) is kept as a *recipe* in ``source_info``, so a bundle's README can show the
plain-torch lines that rebuild it without this library.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .export_source import (
    CLASS_KEYS,
    GITHUB_API,
    ModelLoadError,
    ModelSource,
    check_folder,
    choose_class,
    file_hashes,
    materialize_gist,
    parse_model_py,
    parse_source,
    read_config,
)
from .gpt import build_model

VOCAB_KEYS = ("vocab_size", "vocab", "n_vocab", "num_tokens")
BLOCK_KEYS = ("block_size", "max_seq_len", "n_positions", "context_length",
              "max_position_embeddings")
_CONFIG_PARAM_RE = re.compile(
    r"(model_)?(config|cfg|conf|configuration|args|hparams|params|settings|opts|options)")
_INPUT_NAMES = ("input_ids", "ids", "idx", "tokens", "token_ids", "x", "input", "inputs", "src")
DRY_RUN_TOKENS = 8
_module_counter = itertools.count()


class ConfigNamespace(types.SimpleNamespace):
    """config.json as an object that both ``cfg.d_model`` and ``cfg["d_model"]`` code can read."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return vars(self).get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in vars(self)

    def keys(self) -> Any:  # with __getitem__, makes ``**cfg`` and ``dict(cfg)`` work
        return vars(self).keys()

    def items(self) -> Any:
        return vars(self).items()

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, ConfigNamespace) else v for k, v in self.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigNamespace:
        return cls(**{k: cls.from_dict(v) if isinstance(v, Mapping) else v
                      for k, v in data.items()})


# ----------------------------------------------------------------------------- running the code

def _where(err: BaseException, path: Path) -> str:
    """' (model.py line N)' for the deepest frame of the export, so the user knows where to look."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return f" ({path.name} line {frames[-1].lineno})" if frames else ""


def _import(path: Path, digest: str) -> types.ModuleType:
    # A unique name per load: two exports (or two versions of one) never share a module.
    name = f"_exported_model_{digest[:12]}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"Python cannot import {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up here
    folder = str(path.parent)
    sys.path.insert(0, folder)  # so model.py can import files shipped next to it
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"{err.filename}, line {err.lineno}: syntax error ({err.msg}).") from err
    except ImportError as err:
        sys.modules.pop(name, None)
        missing = getattr(err, "name", None) or str(err)
        raise ModelLoadError(
            f"{path.name} needs {missing!r}, which cannot be imported{_where(err, path)}: {err}. "
            f"Install the package (in Colab: !pip install <package>) and run again; if it is a "
            f"file of the export, put it next to model.py.") from err
    except Exception as err:  # the export's own module-level code failed: report, don't guess
        sys.modules.pop(name, None)
        raise ModelLoadError(f"Running {path.name} failed{_where(err, path)}: "
                             f"{type(err).__name__}: {err}. Fix {path.name} there (importing "
                             "it must only define the model), or export it again.") from err
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _vocab_override(values: dict[str, Any], vocab_size: int | None) -> list[str]:
    """The tokenizer, not the export, knows the real vocabulary: point every vocab key at it."""
    notes = []
    for key in VOCAB_KEYS:
        if vocab_size is not None and key in values and values[key] != vocab_size:
            notes.append(f"{key} {values[key]} -> {vocab_size} (the tokenizer's vocabulary)")
            values[key] = vocab_size
    return notes


def _as_dataclass(annotation: Any, cls: type) -> type | None:
    if isinstance(annotation, str):  # `from __future__ import annotations` in model.py
        annotation = vars(sys.modules[cls.__module__]).get(annotation)
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) \
        else None


def construct(cls: type, values: dict[str, Any], vocab_size: int | None,
              path: Path) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build ``cls`` the way its constructor asks to be called.

    Returns the model, the style in words, and the recipe: ``call`` (none, dataclass, namespace
    or kwargs), the keyword names or config class it used, and ``config``, the values it read.
    """
    P = inspect.Parameter
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"Cannot read the constructor of {cls.__name__}: {err}") from err
    named = [p for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)]
    required = [p for p in named if p.default is P.empty]
    var_kw = any(p.kind is P.VAR_KEYWORD for p in params)
    has_vocab_key = any(k in values for k in VOCAB_KEYS)
    config_params = [p for p in named if _CONFIG_PARAM_RE.fullmatch(p.name)]
    # One config-like parameter and nothing else required (even `config=None` must get ours).
    takes_config = (len(config_params) == 1 and not var_kw
                    and {p.name for p in required} <= {config_params[0].name})
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    recipe: dict[str, Any] = {"call": "none", "config": dict(values)}
    if not named and not var_kw:
        style = "no arguments"
    elif takes_config:
        if vocab_size is not None and not has_vocab_key:
            values = {**values, "vocab_size": vocab_size}
        config_cls = _as_dataclass(config_params[0].annotation, cls)
        if config_cls is not None:
            fields = {f.name for f in dataclasses.fields(config_cls)}
            try:
                args = (config_cls(**{k: v for k, v in values.items() if k in fields}),)
            except TypeError as err:
                raise ModelLoadError(f"config.json does not fit {config_cls.__name__}: {err}. "
                                     "Add the missing keys to config.json.") from err
            style = f"a {config_cls.__name__} built from config.json"
            recipe = {"call": "dataclass", "config": dict(values),
                      "names": [k for k in values if k in fields],
                      "config_class": _module_name_of(config_cls, cls)}
        else:
            args = (ConfigNamespace.from_dict(values),)
            style = "a config object (attribute and key access)"
            recipe = {"call": "namespace", "config": dict(values)}
    else:
        kwargs = {p.name: values[p.name] for p in named if p.name in values}
        if var_kw:
            kwargs.update({k: v for k, v in values.items()
                           if k not in CLASS_KEYS and not k.startswith("_")})
        for p in required:
            if p.name not in kwargs and p.name in VOCAB_KEYS and vocab_size is not None:
                kwargs[p.name] = vocab_size
        missing = [p.name for p in required if p.name not in kwargs]
        if missing:
            raise ModelLoadError(
                f"{cls.__name__}({', '.join(p.name for p in named)}) needs {', '.join(missing)}, "
                f"which config.json does not have: add {' and '.join(map(repr, missing))} to it.")
        style = "keyword arguments from config.json"
        recipe = {"call": "kwargs", "names": list(kwargs), "config": {**values, **kwargs}}
    try:
        model = cls(*args, **kwargs)
    except Exception as err:  # any failure of the export's constructor is reported, never masked
        raise ModelLoadError(f"Building {cls.__name__} from config.json ({style}) failed"
                             f"{_where(err, path)}: {type(err).__name__}: {err}") from err
    return model, style, recipe


def _module_name_of(obj: type, cls: type) -> str:
    """The name under which model.py's module holds ``obj`` (it may be imported under an alias)."""
    module = sys.modules.get(cls.__module__)
    for name, value in vars(module).items() if module is not None else ():
        if value is obj:
            return name
    return obj.__name__


def _input_keyword(model: nn.Module) -> str | None:
    """None: pass token ids by position; else the keyword forward insists on."""
    P = inspect.Parameter
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    name = type(model).__name__
    if not params:
        raise ModelLoadError(f"{name}.forward takes no input; it must take the token ids.")
    first = params[0]
    if first.kind is P.VAR_KEYWORD:
        return "input_ids"
    if first.kind is not P.KEYWORD_ONLY:
        rest = params[1:]
        key = None
    else:
        kw_required = [p for p in params if p.kind is P.KEYWORD_ONLY and p.default is P.empty]
        matches = [p for p in params if p.kind is P.KEYWORD_ONLY and p.name in _INPUT_NAMES]
        chosen = kw_required[0] if len(kw_required) == 1 else (matches[:1] or [None])[0]
        if chosen is None:
            raise ModelLoadError(f"{name}.forward takes only keyword arguments and none of them "
                                 "is clearly the token ids; give it one input parameter.")
        rest = [p for p in params if p is not chosen]
        key = chosen.name
    extra = [p.name for p in rest if p.default is P.empty
             and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    if extra:
        raise ModelLoadError(f"{name}.forward needs more inputs than token ids "
                             f"({', '.join(extra)}); give them defaults so it can be called "
                             "with the token ids alone.")
    return key


def logits_of(out: Any) -> torch.Tensor:
    """The logits in whatever a forward returns: tensor, tuple/list, dict or ``.logits`` object."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    elif isinstance(out, Mapping):
        if "logits" in out:
            out = out["logits"]
        else:
            tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise ModelLoadError(f"forward returned a dict with keys {list(out)} and no "
                                     "'logits' key; return the logits under 'logits'.")
            out = tensors[0]
    elif not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None),
                                                          torch.Tensor):
        out = out.logits
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"forward returned {type(out).__name__}, not logits: return a tensor "
                             "[batch, time, vocab] (alone, first in a tuple, under 'logits' in "
                             "a dict, or as .logits).")
    return out


def logits_access(out: Any) -> str:
    """Where :func:`logits_of` found the logits in ``out``, as Python source for a README:
    ``""`` (the output is the logits), ``"[0]"``, ``'["logits"]'`` or ``".logits"``."""
    if isinstance(out, (tuple, list)) and out:
        return "[0]"
    if isinstance(out, Mapping):
        if "logits" in out:
            return '["logits"]'
        return f"[{next(k for k, v in out.items() if isinstance(v, torch.Tensor))!r}]"
    return "" if isinstance(out, torch.Tensor) else ".logits"


class ExportedModel(nn.Module):
    """An exported model behind the trainer's contract: ids [B, T] -> logits [B, T, vocab].

    ``inner`` is a registered submodule, so the optimizer, ``.to()`` and checkpoints see its
    parameters (under the ``inner.`` prefix); ``inner`` alone is the user's original model.
    """

    def __init__(self, inner: nn.Module, *, vocab_size: int | None = None,
                 block_size: int | None = None, source_info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.input_keyword = _input_keyword(inner)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.source_info = dict(source_info or {})

    def _call_inner(self, input_ids: torch.Tensor) -> Any:
        if self.input_keyword is None:
            return self.inner(input_ids)
        return self.inner(**{self.input_keyword: input_ids})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return logits_of(self._call_inner(input_ids))

    @torch.no_grad()
    def dry_run(self, expected_vocab: int | None = None, path: Path | None = None,
                config_vocab: bool = False) -> int:
        """Run one tiny batch and check the output shape; return the output vocabulary size.

        Eval mode and no_grad: no dropout, so no draw from the global RNG, and seeded training
        after loading stays reproducible. ``config_vocab``: config.json already says
        ``expected_vocab``, so a mismatch means model.py ignores it.
        """
        name = type(self.inner).__name__
        T = min(DRY_RUN_TOKENS, self.block_size or DRY_RUN_TOKENS)
        param = next(self.inner.parameters(), None)
        ids = torch.zeros(1, T, dtype=torch.long, device=param.device if param is not None
                          else None)
        was_training = self.training
        self.eval()
        try:
            out = self._call_inner(ids)
            logits = logits_of(out)
            self.source_info.setdefault("recipe", {}).update(
                input=self.input_keyword, output=logits_access(out))
        except ModelLoadError:
            raise
        except Exception as err:  # the export's forward failed: report where and why
            where = _where(err, path) if path else ""
            raise ModelLoadError(f"{name}.forward failed on a [1, {T}] batch of token ids"
                                 f"{where}: {type(err).__name__}: {err}") from err
        finally:
            self.train(was_training)
        shape = tuple(logits.shape)
        want = f"[1, {T}, vocab]"
        if logits.dim() != 3 or shape[:2] != (1, T):
            hint = ""
            if logits.dim() == 3 and shape[:2] == (1, 1):
                hint = (" It returns only the last position, as nanoGPT does when no targets are "
                        "given: return logits for every position.")
            raise ModelLoadError(f"{name} outputs shape {list(shape)} for input [1, {T}], but the "
                                 f"trainer needs logits {want}: one row of vocabulary scores per "
                                 f"input token.{hint}")
        if not logits.is_floating_point():
            raise ModelLoadError(f"{name} outputs {logits.dtype} values; logits must be floats.")
        vocab = shape[2]
        if expected_vocab is not None and vocab != expected_vocab:
            fix = (f"model.py ignores config.json's vocab_size (already {expected_vocab}): make "
                   f"{name} read it" if config_vocab else
                   f"set vocab_size in config.json to {expected_vocab}")
            raise ModelLoadError(f"model outputs vocab {vocab} but the tokenizer has "
                                 f"{expected_vocab} tokens: {fix} or use a tokenizer of that size.")
        self.vocab_size = vocab
        return vocab


# ----------------------------------------------------------------------------- the public calls

def _find_block_size(values: Mapping[str, Any], inner: nn.Module) -> int | None:
    for key in BLOCK_KEYS:
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = getattr(inner, "block_size", None)
    return value if isinstance(value, int) and value > 0 else None


def _load(src: ModelSource, *, trust: bool, vocab_size: int | None, cache_dir: Path | None,
          api_base: str, timeout: float, verbose: bool,
          require_trust: bool = False) -> ExportedModel:
    def say(text: str) -> None:
        if verbose:
            print(text)

    info: dict[str, Any] = {"kind": src.kind}
    if src.kind == "gist":
        folder, revision, origin = materialize_gist(src, cache_dir=cache_dir, api_base=api_base,
                                                    timeout=timeout)
        info.update(source=f"gist:{src.gist_id}", gist_id=src.gist_id, revision=revision,
                    origin=origin)
        title = f"Gist {src.gist_id} @ revision {revision} ({origin})"
    else:
        folder = check_folder(src)
        info.update(source=str(folder))
        title = f"folder {folder}"
    model_path = folder / "model.py"
    config = read_config(folder / "config.json")
    class_name, how = choose_class(parse_model_py(model_path), config, model_path)
    hashes = file_hashes(folder)
    info.update(folder=str(folder), sha256=hashes, **{"class": class_name})
    width = max(map(len, hashes))
    header = "\n".join([f"Exported model from {title}",
                        *(f"  {n:<{width}}  sha256 {h}" for n, h in hashes.items()),
                        f"  class: {class_name} ({how})"])
    # Code that is not the user's own: its hashes are shown even when quiet, before it runs.
    if verbose or src.kind == "gist" or require_trust:
        print(header)
    if src.kind == "gist" and not trust:
        raise ModelLoadError(
            f"Not running the code of Gist {src.gist_id}: loading it executes its model.py on "
            f"this machine, with access to your files and Drive.\n{header}\nRead model.py at "
            f"https://gist.github.com/{src.gist_id} (check that its SHA-256 matches), then tick "
            "the notebook's 'trust this code' checkbox, or pass trust=True.")
    if require_trust and not trust:
        raise ModelLoadError(
            f"Not running the code in {folder}: loading it executes its model.py on this "
            f"machine, with access to your files and Drive.\n{header}\nRead {model_path} (check "
            "that its SHA-256 is the one its author gave you), then pass trust=True.")

    module = _import(model_path, hashes["model.py"])
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{class_name} in {model_path} is not a torch nn.Module class "
                             f"after import; set \"model_name\" in config.json to the model class.")
    values = dict(config)
    for note in _vocab_override(values, vocab_size):
        say(f"  config: {note}")
    inner, style, recipe = construct(cls, values, vocab_size, model_path)
    if next(inner.parameters(), None) is None:
        raise ModelLoadError(f"{class_name} has no parameters, so there is nothing to train: "
                             "its __init__ must create its layers (nn.Embedding, nn.Linear, ...) "
                             "as attributes, or set \"model_name\" in config.json to the class "
                             "that does.")
    info.update(constructed_with=style, recipe={"class": class_name, **recipe})
    model = ExportedModel(inner, block_size=_find_block_size(values, inner), source_info=info)
    model.dry_run(vocab_size, model_path, config_vocab=any(k in values for k in VOCAB_KEYS))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"  built with {style}: {n_params:,} parameters, vocab {model.vocab_size}, "
        f"block_size {model.block_size if model.block_size else 'unknown'}")
    return model


def load_exported_model(
    source: str | os.PathLike[str],
    *,
    trust: bool = False,
    vocab_size: int | None = None,
    revision: str | None = None,
    cache_dir: Path | None = None,
    api_base: str = GITHUB_API,
    timeout: float = 10.0,
    verbose: bool = True,
    require_trust: bool = False,
) -> ExportedModel:
    """Load a Transformer Builder export from a Gist id/URL or a local folder.

    ``vocab_size`` is the tokenizer's: it overrides config.json's vocab key and the model's
    output must match it. A Gist's code only runs with ``trust=True``; a local folder holds the
    user's own files and is trusted, unless ``require_trust`` says it is someone else's (a
    bundle). Raises ModelLoadError (never falls back to another model).
    """
    src = parse_source(source, revision)
    return _load(src, trust=trust, vocab_size=vocab_size, cache_dir=cache_dir,
                 api_base=api_base, timeout=timeout, verbose=verbose,
                 require_trust=require_trust)


def model_from_config(
    config: Any,
    vocab_size: int | None = None,
    *,
    trust: bool = False,
    cache_dir: Path | None = None,
    api_base: str = GITHUB_API,
    timeout: float = 10.0,
    verbose: bool = True,
) -> nn.Module:
    """The model a TrainingConfig asks for: ``model_source`` builtin, gist or folder.

    A model_ref that contradicts model_source (a folder given as a Gist) is an error rather than
    a guess, and so is a training block_size longer than the export's context.
    """
    kind = str(config.model_source)
    if kind == "builtin":
        return build_model(config, vocab_size=vocab_size)
    if kind not in ("gist", "folder"):
        raise ModelLoadError(f"model_source = {kind!r}: must be builtin, gist or folder.")
    ref = str(config.model_ref).strip()
    src = parse_source(ref)
    if src.kind != kind:
        fix = ("set model_source = 'folder'" if src.kind == "folder"
               else "give an existing folder, or set model_source = 'gist'")
        raise ModelLoadError(f"model_source = {kind!r} but model_ref {ref!r} is a "
                             f"{'local folder' if src.kind == 'folder' else 'Gist id/URL'}: {fix}.")
    model = _load(src, trust=trust, vocab_size=vocab_size, cache_dir=cache_dir,
                  api_base=api_base, timeout=timeout, verbose=verbose)
    if model.block_size is not None and int(config.block_size) > model.block_size:
        raise ModelLoadError(f"block_size = {config.block_size} is longer than the exported "
                             f"model's context of {model.block_size} tokens: set block_size "
                             f"to {model.block_size} or less.")
    return model
