"""A model's state dict as a safetensors file, tied tensors included (no pickle, no code).

safetensors refuses tensors that share memory, such as a tied embedding and output head. Each
tied tensor is stored once and its other names are kept in the file's metadata as aliases; the
file stays one that ``safetensors.torch.load_model`` loads into the model by itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def unique_tensors(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, str]]:
    """Tensors safetensors will accept, and {alias: name} for the tied ones.

    A tensor identical to one already kept becomes an alias, any other overlap an independent
    copy."""
    kept: dict[tuple, str] = {}
    storages: set[int] = set()
    tensors, aliases = {}, {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        shared = ptr in storages and tensor.numel() > 0
        storages.add(ptr)
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    return tensors, aliases


def save_weights(path: Path, state: Mapping[str, torch.Tensor]) -> int:
    """Write ``state`` to ``path``; return the number of parameters stored (tied ones once)."""
    tensors, aliases = unique_tensors(state)
    save_file(tensors, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})
    return sum(t.numel() for t in tensors.values())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_weights`: every name, tied ones pointing at one tensor again."""
    with safe_open(str(path), framework="pt", device="cpu") as weights:
        aliases = json.loads((weights.metadata() or {}).get("aliases", "{}"))
        tensors = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    for alias, original in aliases.items():
        tensors[alias] = tensors[original]
    return tensors
