"""FSDP (``sharding="fsdp"`` under torchrun): a model too big for one GPU, sharded over the ranks.

``torch.distributed.fsdp.fully_shard`` (FSDP2) splits every parameter, its gradient and its
AdamW state into one piece per rank: each transformer block is its own unit, gathered just
before it runs and freed after, so one GPU holds a block at a time, not the model. The loop
stays the DDP loop; what differs is here:
- every forward pass is a collective (it gathers weights), so every rank must run as many;
- checkpoints keep the one format every run writes (full tensors, the optimizer's state keyed
  by parameter index): saving gathers each tensor in turn on every rank (a collective; rank 0
  keeps it, on the CPU), loading cuts each rank's piece out of the full tensor (local, so the
  ranks may load one after another). A checkpoint moves freely between 1 process, DDP and FSDP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _fsdp() -> Any:
    from torch.distributed import fsdp  # torch >= 2.6: fully_shard, FSDPModule

    return fsdp


def _dtensor() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model: nn.Module) -> bool:
    return torch.distributed.is_available() and isinstance(model, _fsdp().FSDPModule)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, each to be its own FSDP unit: the built-in GPT's ``blocks``, else
    the ModuleList holding the most parameters. No blocks when one shares a weight with anything
    outside it (a tied weight must stay in one unit): then the whole model is one unit."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
        blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)
    if blocks is None:
        return []
    prefix = next(name for name, m in model.named_modules() if m is blocks) + "."
    seen = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
            if not name.startswith(prefix)}
    for block in blocks:
        own = {id(p) for p in block.parameters()}
        if own & seen:  # shared with the root or another block
            return []
        seen |= own
    return list(blocks)


def shard(model: nn.Module) -> nn.Module:
    """Shard the model in place (it is on this rank's device already): each block, then the
    root, which keeps the rest (embeddings, the tied head, the final norm)."""
    fully_shard = _fsdp().fully_shard
    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


@contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """FSDP's ``no_sync``: gradients stay whole on each rank and are reduce-scattered once, at
    the accumulation's last backward pass."""
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def grad_scaler(model: nn.Module, device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """fp16's scaler. Sharded, each rank sees only its piece of the gradients: the sharded
    scaler agrees on "found inf" over the ranks, so they all skip a step or none does."""
    if enabled and is_sharded(model):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=True)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to ``max_norm``; the total norm, a plain tensor (sharded, it is a DTensor until
    gathered, and the NaN guard mixes it with plain tensors)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, _dtensor()) else norm


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, optimizer state) as a checkpoint holds them. Sharded, this is a collective
    that every rank must call: each tensor is gathered in turn (one whole tensor on the device
    at a time), and rank 0 alone keeps it, on the CPU; the other ranks get empty dicts."""
    weights, state = model.state_dict(), optimizer.state_dict()
    if not is_sharded(model):
        return weights, state
    keep = torch.distributed.get_rank() == 0
    dtensor = _dtensor()

    def whole(value: Any) -> Any:
        if not isinstance(value, dtensor):
            return value
        gathered = value.full_tensor()
        return gathered.cpu() if keep else None

    weights = {name: whole(value) for name, value in weights.items()}
    per_param = {index: {key: whole(value) for key, value in entry.items()}
                 for index, entry in state["state"].items()}
    if not keep:
        return {}, {}
    return weights, {"state": per_param, "param_groups": state["param_groups"]}


def local_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                weights: Mapping[str, Any], state: Mapping[str, Any]
                ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """A checkpoint's (weights, optimizer state) as this rank loads them: unchanged when the
    model is not sharded, else each full tensor cut to this rank's piece, which needs no other
    rank. A tensor whose shape does not match is left whole, for the load to refuse."""
    if not is_sharded(model):
        return weights, state
    from torch.distributed.tensor import distribute_tensor

    dtensor = _dtensor()

    def piece(value: Any, like: Any) -> Any:
        if isinstance(like, dtensor) and isinstance(value, torch.Tensor) \
                and not isinstance(value, dtensor) and value.shape == like.shape:
            return distribute_tensor(value.to(like.device), like.device_mesh, like.placements,
                                     src_data_rank=None)
        return value

    own = model.state_dict()
    weights = {name: piece(value, own.get(name)) for name, value in weights.items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param = {index: {key: piece(value, params[int(index)] if int(index) < len(params)
                                    else None) for key, value in entry.items()}
                 for index, entry in state["state"].items()}
    return weights, {**state, "state": per_param}
