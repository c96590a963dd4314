"""Models: the built-in GPT and Transformer Builder exports (a Gist or a folder).

Beside them: the built-in GPT as a Hugging Face GPT-2 (``hf_gpt2``), an export as plain-torch
lines for a README (``standalone``) and state dicts as safetensors files (``weights``).
"""

from .export_source import GITHUB_API, GistUnavailableError, ModelLoadError, parse_source
from .exported import ConfigNamespace, ExportedModel, load_exported_model, model_from_config
from .gpt import GPT, GPTConfig, build_model, generate

__all__ = [
    "GITHUB_API",
    "GPT",
    "ConfigNamespace",
    "ExportedModel",
    "GPTConfig",
    "GistUnavailableError",
    "ModelLoadError",
    "build_model",
    "generate",
    "load_exported_model",
    "model_from_config",
    "parse_source",
]
