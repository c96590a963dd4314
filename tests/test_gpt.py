"""The built-in GPT: shapes, tying, causality, sizing from a config, RNG-clean sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from utils.training.models import GPT, GPTConfig, build_model, generate


def tiny(vocab_size: int = 50, block_size: int = 16, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layers=2, n_heads=2, d_model=32)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return GPT.from_config(cfg)


def test_logits_cover_real_vocab_while_embedding_is_padded():
    model = tiny(vocab_size=50)
    assert model.tok_emb.weight.shape[0] == 64  # padded to a multiple of 64
    logits = model(torch.randint(0, 50, (3, 10)))
    assert logits.shape == (3, 10, 50)
    # Consumers may flatten logits for cross-entropy.
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 50), torch.zeros(30, dtype=torch.long)
    )
    assert torch.isfinite(loss)


def test_weight_tying_shares_storage():
    model = tiny()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny().eval()
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 7) % 50
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_too_long_sequence_names_both_lengths():
    model = tiny(block_size=16)
    with pytest.raises(ValueError, match=r"17.*16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_build_model_from_duck_typed_config():
    config = SimpleNamespace(
        n_layers=3, n_heads=4, d_model=64, d_ff=0, dropout=0.1, block_size=32, vocab_size=100
    )
    model = build_model(config)
    assert model.vocab_size == 100 and model.block_size == 32
    assert model.config.d_ff == 256 and len(model.blocks) == 3
    # The tokenizer's vocabulary wins over the form's.
    assert build_model(config, vocab_size=257).vocab_size == 257


def test_generate_is_seeded_and_leaves_global_rng_alone():
    model = tiny(dropout=0.1)  # dropout would draw from the global RNG if left on
    model.train()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    rng_before = torch.random.get_rng_state()
    a = generate(model, prompt, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.equal(a, b) and a.shape == (2, 21)
    assert model.training  # mode restored
    assert int(a.max()) < 50


def test_generate_crops_context_to_block_size():
    model = tiny(block_size=8)
    out = generate(model, torch.zeros(1, 8, dtype=torch.long), 5, temperature=0)
    assert out.shape == (1, 13)


def test_generate_works_for_any_logits_model():
    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(5, 5)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.table(idx)

    out = generate(Bigram(), torch.zeros(1, 2, dtype=torch.long), 4, generator=torch.Generator())
    assert out.shape == (1, 6)


def test_parameter_count_and_flops_are_sane():
    model = tiny(vocab_size=50, block_size=16)
    d, L, ff = 32, 2, 128
    per_block = 3 * d * d + d * d + 2 * d * ff + 2 * d  # qkv, proj, mlp, two norm weights
    non_emb = L * per_block + d  # + final norm
    assert model.num_parameters(exclude_embeddings=True) == non_emb
    assert model.num_parameters() == non_emb + 64 * d + 16 * d  # tied head counted once
    assert model.flops_per_token() == 6 * (non_emb + 50 * d) + 12 * L * d * 16


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layers=8, n_heads=4, d_model=256))
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
