"""The built-in GPT as a Hugging Face GPT-2 checkpoint, and back, without importing transformers.

Our GPT is GPT-2 with the biases left out, so the conversion is exact rather than approximate:
GPT-2's biases (attention, MLP, layer norms) are written as zeros, our exact-erf GELU is named
``"gelu"`` (``"gelu_new"`` would be GPT-2's tanh approximation), ``nn.Linear``'s ``[out, in]``
weights are transposed into ``Conv1D``'s ``[in, out]``, and the padded vocabulary travels whole.
The padding rows are never trained, so ``generation_config.json`` suppresses them: a sampler
outside this library can never pick an id the tokenizer cannot decode.

The library never needs transformers to train; it is only what the *user* takes home, so this
module writes and reads the folder with plain tensors, JSON and safetensors, and stays on floor 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import PersonFacing
from .gpt import GPT, GPTConfig

# nn.LayerNorm's default, which the built-in GPT uses.
LAYER_NORM_EPS = 1e-5
_BLOCK = "transformer.h.{i}."
# Each block's weights: our name -> GPT-2's. The linear ones are transposed (not the norms').
_LAYER = {"ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln2": "ln_2",
          "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
WEIGHTS = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"

# What a bundle's README shows: transformers alone loads the folder and samples from it.
TRANSFORMERS_SNIPPET = """import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BUNDLE = {path!r}
tokenizer = AutoTokenizer.from_pretrained(BUNDLE)
model = AutoModelForCausalLM.from_pretrained(BUNDLE).eval()

prompt = {prompt!r}
# An empty prompt starts from the end-of-document token, as a new document would.
ids = (tokenizer(prompt, return_tensors="pt").input_ids if prompt
       else torch.tensor([[model.generation_config.bos_token_id]]))
room = model.config.n_positions - ids.shape[1]  # it sees at most n_positions tokens
torch.manual_seed(0)
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=min(100, room),
                     do_sample=True, top_k=50)
print(tokenizer.decode(out[0]))
"""


class GPT2ConversionError(PersonFacing, ValueError):
    """Weights that do not fit the built-in GPT / GPT-2 correspondence; the message says why."""


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def gpt2_config(cfg: GPTConfig, eos_id: int | None) -> dict[str, Any]:
    """config.json of the equivalent ``GPT2LMHeadModel``.

    ``bos_token_id`` is where generation starts from an empty prompt: the end-of-document token,
    as a new document would, or id 0 for a tokenizer without one (synthetic ids).
    """
    start = eos_id if eos_id is not None else 0
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.padded_vocab_size,  # the tokenizer may be smaller: rows are padding
        "n_positions": cfg.block_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu",  # F.gelu, exact erf: NOT GPT-2's tanh "gelu_new"
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # 1/sqrt(head_dim), as scaled_dot_product_attention does
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": start,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        # Ours, ignored by transformers: the real vocabulary inside the padded one.
        "tokenizer_vocab_size": cfg.vocab_size,
    }


def generation_config(cfg: GPTConfig, eos_id: int | None) -> dict[str, Any]:
    """generation_config.json: start/stop tokens, and the padding ids suppressed."""
    start = eos_id if eos_id is not None else 0
    out: dict[str, Any] = {"bos_token_id": start, "eos_token_id": eos_id,
                           "pad_token_id": eos_id, "do_sample": True, "top_k": 50}
    padding = list(range(cfg.vocab_size, cfg.padded_vocab_size))
    if padding:
        out["suppress_tokens"] = padding
    return out


def _get(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return state[key]
    except KeyError:
        raise GPT2ConversionError(f"The weights have no {key!r}: they are not those of "
                                  "the built-in GPT this config describes.") from None


def to_gpt2(state: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT's state dict as GPT-2's (float32, contiguous, the tied head stored once)."""
    d, padded = cfg.d_model, cfg.padded_vocab_size
    wte = _get(state, "tok_emb.weight")
    if tuple(wte.shape) != (padded, d):
        raise GPT2ConversionError(f"tok_emb.weight is {list(wte.shape)}, but the config says "
                                  f"[{padded}, {d}] (vocab {cfg.vocab_size} padded to {padded}).")
    head = state.get("lm_head.weight")
    if head is not None and not torch.equal(head, wte):
        raise GPT2ConversionError("lm_head.weight differs from tok_emb.weight; GPT-2 ties them.")
    zeros = torch.zeros  # GPT-2 has biases where ours has none: zero adds nothing

    out = {"transformer.wte.weight": _f32(wte),
           "transformer.wpe.weight": _f32(_get(state, "pos_emb.weight")),
           "transformer.ln_f.weight": _f32(_get(state, "ln_f.weight")),
           "transformer.ln_f.bias": zeros(d)}
    bias_size = {"attn.qkv": 3 * d, "mlp.fc": cfg.d_ff}  # the others' is d_model
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", _BLOCK.format(i=i)
        for mine, gpt2 in _LAYER.items():
            weight = _get(state, f"{ours}{mine}.weight")
            # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out] and computes x @ W + b.
            out[f"{theirs}{gpt2}.weight"] = _f32(weight if mine.startswith("ln") else weight.t())
            out[f"{theirs}{gpt2}.bias"] = zeros(bias_size.get(mine, d))
    return out


def gpt_config_from_gpt2(config: Mapping[str, Any]) -> GPTConfig:
    """The GPTConfig a GPT-2 config.json written by :func:`gpt2_config` describes."""
    if config.get("model_type") != "gpt2" or config.get("activation_function") != "gelu":
        raise GPT2ConversionError(
            f"config.json describes model_type {config.get('model_type')!r} with activation "
            f"{config.get('activation_function')!r}; only a GPT-2 exported from the built-in GPT "
            "(activation 'gelu') converts back. Load it with transformers instead.")
    try:
        cfg = GPTConfig(vocab_size=int(config.get("tokenizer_vocab_size", config["vocab_size"])),
                        block_size=int(config["n_positions"]), n_layers=int(config["n_layer"]),
                        n_heads=int(config["n_head"]), d_model=int(config["n_embd"]),
                        d_ff=int(config.get("n_inner") or 0),
                        dropout=float(config.get("resid_pdrop", 0.0)))
    except (KeyError, TypeError, ValueError) as err:
        raise GPT2ConversionError(f"config.json is not a complete GPT-2 config: {err}") from err
    if cfg.padded_vocab_size != int(config["vocab_size"]):
        raise GPT2ConversionError(
            f"config.json has vocab_size {config['vocab_size']} for a tokenizer of "
            f"{cfg.vocab_size}, not the padding the built-in GPT uses ({cfg.padded_vocab_size}).")
    return cfg


def from_gpt2(tensors: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_gpt2`: GPT-2 weights as our GPT's state dict (lm_head tied).

    Refuses non-zero biases rather than dropping them: a GPT-2 fine-tuned elsewhere has learned
    biases the built-in GPT cannot hold, and silently losing them would change its outputs.
    """
    def no_bias(key: str) -> None:
        bias = tensors.get(key)
        if bias is not None and bool(bias.ne(0).any()):
            raise GPT2ConversionError(
                f"{key} is not zero: these GPT-2 weights were changed outside this library (the "
                "built-in GPT has no biases). Load them with transformers instead.")

    wte = _get(tensors, "transformer.wte.weight")
    state = {"tok_emb.weight": wte, "pos_emb.weight": _get(tensors, "transformer.wpe.weight"),
             "ln_f.weight": _get(tensors, "transformer.ln_f.weight"), "lm_head.weight": wte}
    no_bias("transformer.ln_f.bias")
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", _BLOCK.format(i=i)
        for gpt2 in _LAYER.values():
            no_bias(f"{theirs}{gpt2}.bias")
        for mine, gpt2 in _LAYER.items():
            weight = _get(tensors, f"{theirs}{gpt2}.weight")
            state[f"{ours}{mine}.weight"] = (weight if mine.startswith("ln")
                                             else weight.t().contiguous())
    return state


def save_gpt2_folder(folder: Path, state: Mapping[str, torch.Tensor], cfg: GPTConfig,
                     eos_id: int | None) -> None:
    """config.json, generation_config.json and model.safetensors of the equivalent GPT-2."""
    save_file(to_gpt2(state, cfg), str(folder / WEIGHTS), metadata={"format": "pt"})
    for name, content in (("config.json", gpt2_config(cfg, eos_id)),
                          (GENERATION_CONFIG, generation_config(cfg, eos_id))):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def load_gpt2_folder(folder: Path, config: Mapping[str, Any]) -> GPT:
    """The built-in GPT from a folder :func:`save_gpt2_folder` wrote (``config``: its config.json).

    Raises GPT2ConversionError for a GPT-2 the built-in GPT cannot hold, RuntimeError for
    weights of the wrong shapes.
    """
    cfg = gpt_config_from_gpt2(config)
    model = GPT(cfg)
    model.load_state_dict(from_gpt2(load_file(str(folder / WEIGHTS)), cfg), strict=True)
    return model
