"""An exported model as plain code: the lines a bundle's README shows to use it without us.

A Transformer Builder model is the user's own ``model.py``, so the person who receives it needs
torch, safetensors, tokenizers and that file, nothing of this library. The recipe that
:func:`~.exported.construct` and the dry run recorded (how the class was called, which config
values it read, how forward takes the ids and returns the logits) is turned back into those few
lines here, so the README shows exactly what this library did, for this export, and no guesses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_CONFIG_CLASS = '''

class Config(dict):
    """config.json readable both as config.d_model and config["d_model"]."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
'''


def _changed(recipe: Mapping[str, Any], original: Mapping[str, Any]) -> list[str]:
    """``config[key] = value`` lines for the values training used that config.json lacks."""
    used = recipe.get("config") or {}
    keys = [] if recipe.get("call") == "none" else (recipe.get("names") or list(used))
    return [f"config[{key!r}] = {used[key]!r}  # as training used it (the tokenizer's vocabulary)"
            for key in keys if key in used and (key not in original or original[key] != used[key])]


def _build(recipe: Mapping[str, Any]) -> str:
    cls = f"module.{recipe['class']}"
    call = recipe.get("call")
    if call == "none":
        return f"model = {cls}()"
    if call == "namespace":
        return f"model = {cls}(config)"
    names = tuple(recipe.get("names") or ())
    picked = f"{{key: config[key] for key in {names!r}}}"
    if call == "dataclass":
        return f"model = {cls}(module.{recipe['config_class']}(**{picked}))"
    return f"model = {cls}(**{picked})"


def torch_snippet(recipe: Mapping[str, Any], original_config: Mapping[str, Any], *, bundle: str,
                  source_dir: str, weights: str, tokenizer: str, prompt: str, start_id: int,
                  block_size: int | None, max_new_tokens: int = 100) -> str:
    """A runnable script that builds the model, loads its weights and samples text.

    ``original_config`` is the bundle's copy of config.json; values training changed (the
    vocabulary comes from the tokenizer) are set on top of it, visibly.
    """
    if "class" not in recipe or "output" not in recipe:
        raise ValueError("The recipe is incomplete: it comes from a model loaded by "
                         "load_exported_model, after its dry run.")
    namespace = recipe.get("call") == "namespace"
    hook = ", object_hook=Config" if namespace else ""
    call = "model(input_ids=context)" if recipe.get("input") else "model(context)"
    context = f"ids[-{block_size}:]" if block_size else "ids"
    lines = [
        "import importlib.util",
        "import json",
        "import sys",
        "",
        "import torch",
        "from safetensors.torch import load_model",
        "from tokenizers import Tokenizer",
        *(_CONFIG_CLASS.splitlines() if namespace else []),
        "",
        f"BUNDLE = {bundle!r}",
        f"SOURCE = BUNDLE + {'/' + source_dir!r}",
        "# model.py is the export's own code and runs here: read it first.",
        "sys.path.insert(0, SOURCE)  # for files model.py imports from beside it",
        'spec = importlib.util.spec_from_file_location("exported_model", SOURCE + "/model.py")',
        "module = importlib.util.module_from_spec(spec)",
        "sys.modules[spec.name] = module",
        "spec.loader.exec_module(module)",
        'with open(SOURCE + "/config.json", encoding="utf-8") as f:',
        f"    config = json.load(f{hook})",
        *_changed(recipe, original_config),
        _build(recipe),
        f"load_model(model, BUNDLE + {'/' + weights!r})",
        "model.eval()",
        "",
        f"tokenizer = Tokenizer.from_file(BUNDLE + {'/' + tokenizer!r})",
        f"prompt = {prompt!r}",
        f"ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [{start_id}]",
        "torch.manual_seed(0)",
        "with torch.no_grad():",
        f"    for _ in range({max_new_tokens}):",
        f"        context = torch.tensor([{context}])",
        f"        logits = {call}{recipe['output']}[0, -1]",
        "        probs = torch.softmax(logits / 0.8, dim=-1)",
        "        ids.append(int(torch.multinomial(probs, 1)))",
        "print(tokenizer.decode(ids))",
    ]
    return "\n".join(lines) + "\n"
