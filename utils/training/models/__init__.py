"""Models: the built-in GPT (exported Transformer Builder models join here later)."""

from .gpt import GPT, GPTConfig, build_model, generate

__all__ = ["GPT", "GPTConfig", "build_model", "generate"]
