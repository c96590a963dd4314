"""The built-in GPT: a small decoder-only transformer in the nanoGPT mould.

It is the model every run can fall back on and the yardstick for exported ones, so it favours
being obviously correct over being configurable: pre-norm blocks, learned positions, fused
causal attention and a tied output head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..training_config import TrainingConfig

# Embedding rows are padded to a multiple of this so the lm_head matmul has tensor-core friendly
# shapes (nanoGPT measured ~25% speed-up for GPT-2's 50257 -> 50304).
VOCAB_PAD_MULTIPLE = 64


@dataclass
class GPTConfig:
    """The few numbers that fully determine the architecture (and so a checkpoint's shape)."""

    vocab_size: int
    block_size: int
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 256
    d_ff: int = 0  # 0 means the usual 4 * d_model
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_ff <= 0:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"pick e.g. n_heads={math.gcd(self.d_model, self.n_heads)} or a wider d_model."
            )
        if self.vocab_size < 1 or self.block_size < 1:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) and block_size ({self.block_size}) must be >= 1."
            )

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        # One fused projection for q, k and v: one big matmul beats three small ones.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, heads, T, head_dim]
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # SDPA picks flash / memory-efficient kernels on GPU; is_causal avoids building a mask.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        # Pre-norm: the residual stream is never normalised, which keeps deep stacks trainable
        # without warm-up tricks. bias=False: biases in norms/linears add nothing measurable.
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer returning logits over exactly `vocab_size` classes."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.block_size = cfg.block_size
        padded = cfg.padded_vocab_size
        self.tok_emb = nn.Embedding(padded, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, padded, bias=False)
        # Weight tying: input and output embeddings share one matrix. Fewer parameters and
        # consistently better perplexity for small models (Press & Wolf, 2017).
        self.lm_head.weight = self.tok_emb.weight

        self.apply(self._init_weights)
        # Each block adds two residual branches; scaling their output projections by
        # 1/sqrt(2 * n_layers) keeps the variance of the residual stream roughly constant with
        # depth at init instead of growing with the number of layers (GPT-2 paper, sec. 2.3).
        std = 0.02 / math.sqrt(2 * cfg.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, cfg: GPTConfig) -> GPT:
        return cls(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab_size]; the padding columns never leave the model."""
        seq_len = input_ids.shape[1]
        if seq_len > self.block_size:
            raise ValueError(
                f"Sequence length {seq_len} exceeds the model's block_size {self.block_size}; "
                f"crop the input to the last {self.block_size} tokens."
            )
        pos = torch.arange(seq_len, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        # Slicing keeps the matmul padded (fast) while every consumer - the loss, sampling,
        # perplexity - sees exactly vocab_size classes, so padding can never be sampled.
        return logits[..., : self.vocab_size]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; tied weights are counted once.

        exclude_embeddings=True drops the token and position tables (Kaplan et al.'s N), the
        number that scaling laws and model-size comparisons use.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() de-duplicates tied weights
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per token, for MFU.

        The PaLM / nanoGPT estimate 6 * N + 12 * L * d_model * T, where N is the non-embedding
        parameters PLUS the real-vocab part of the tied lm_head (d_model * vocab_size): the head
        is a genuine matmul on every token, unlike the position lookup. Padding columns are not
        counted, so MFU credits only useful work. T = block_size (the attention term ignores the
        causal halving, as PaLM does).
        """
        cfg = self.config
        n = self.num_parameters(exclude_embeddings=True) + cfg.d_model * cfg.vocab_size
        return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * cfg.block_size


def gpt_config(config: TrainingConfig | Any, vocab_size: int | None = None) -> GPTConfig:
    """The GPTConfig a TrainingConfig (read by attribute only) describes.

    vocab_size wins over config.vocab_size because the tokenizer, not the form, knows the real
    vocabulary.
    """
    return GPTConfig(
        vocab_size=int(vocab_size if vocab_size is not None else config.vocab_size),
        block_size=int(config.block_size),
        n_layers=int(config.n_layers),
        n_heads=int(config.n_heads),
        d_model=int(config.d_model),
        d_ff=int(getattr(config, "d_ff", 0) or 0),
        dropout=float(getattr(config, "dropout", 0.0)),
    )


def build_model(config: TrainingConfig | Any, vocab_size: int | None = None) -> GPT:
    """A GPT sized by a TrainingConfig (see :func:`gpt_config`).

    Seeds nothing: the trainer seeds before building so init is reproducible.
    """
    return GPT(gpt_config(config, vocab_size))


def _as_logits(out: Any) -> torch.Tensor:
    # Exported models may return a tuple (logits, loss) or an object with .logits (HF style).
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.logits


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Autoregressive sampling for any model mapping ids [B, T] to logits [B, T, V].

    Sampling draws only from `generator`, never the global RNG, and the model is switched to
    eval mode (dropout off, which would otherwise consume the global RNG) for the duration, so
    printing a sample mid-training cannot change the rest of the run: resume stays bit-exact.
    temperature <= 0 means greedy decoding.
    """
    block_size = getattr(model, "block_size", None)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            ctx = idx if block_size is None else idx[:, -block_size:]
            logits = _as_logits(model(ctx))[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                # multinomial needs probs on the generator's device (a CPU generator is the
                # usual choice even for a CUDA model); the copy is one row per sequence.
                if generator is not None and probs.device != generator.device:
                    probs = probs.to(generator.device)
                nxt = torch.multinomial(probs, 1, generator=generator).to(idx.device)
            idx = torch.cat((idx, nxt), dim=1)
    finally:
        model.train(was_training)
    return idx
