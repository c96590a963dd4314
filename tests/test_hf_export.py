"""The built-in GPT as a Hugging Face GPT-2 folder: transformers loads it with no code of ours,
and computes exactly what our model computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as CoreTokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from utils.training.data import build_tokenizer
from utils.training.data.tokenizer import save_tokenizer
from utils.training.models import GPT, GPTConfig
from utils.training.models.hf_gpt2 import (
    GPT2ConversionError,
    gpt2_config,
    load_gpt2_folder,
    save_gpt2_folder,
)
from utils.training.training_config import TrainingConfig

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs.\n",
    "def add(a, b):\n    return a + b\n\nnaïve café — déjà vu; 日本語 🚀\n",
    "  two  spaces, a\ttab and a windows line end\r\n",
] * 10
BLOCK = 32


@pytest.fixture(scope="module", params=["bpe", "char", "byte"])
def tokenizer(request):
    return build_tokenizer(TrainingConfig(tokenizer=request.param, vocab_size=300), CORPUS)


def random_gpt(vocab_size: int, seed: int = 0) -> GPT:
    """A small GPT whose every weight matters: norms are not left at 1."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layers=2, n_heads=2, d_model=32,
                    d_ff=80)
    model = GPT(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln" in name or name.startswith("ln"):
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


def hf_folder(model: GPT, tok, folder):
    folder.mkdir()
    save_gpt2_folder(folder, model.state_dict(), model.config, tok.eos_id)
    save_tokenizer(tok, folder / "tokenizer.json", model_max_length=BLOCK)
    return folder


def test_hf_model_computes_our_logits(tokenizer, tmp_path):
    model = random_gpt(tokenizer.vocab_size)
    assert model.config.padded_vocab_size > tokenizer.vocab_size  # the padding travels too
    folder = hf_folder(model, tokenizer, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.config.activation_function == "gelu" and hf.config.n_inner == 80
    assert hf.config.vocab_size == model.config.padded_vocab_size
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied

    ids = torch.tensor([tokenizer.encode(CORPUS[1])[:BLOCK], tokenizer.encode(CORPUS[0])[:BLOCK]])
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
    assert theirs.shape[-1] == model.config.padded_vocab_size
    torch.testing.assert_close(theirs[..., : tokenizer.vocab_size], ours, atol=1e-4, rtol=0)

    # And back: the folder is the built-in GPT again, weight for weight.
    again = load_gpt2_folder(folder, json.loads((folder / "config.json").read_text()))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_tokenizer_loads_in_transformers_with_our_ids(tokenizer, tmp_path):
    folder = hf_folder(random_gpt(tokenizer.vocab_size), tokenizer, tmp_path / "hf")
    auto = AutoTokenizer.from_pretrained(folder)
    core = CoreTokenizer.from_file(str(folder / "tokenizer.json"))
    assert auto.eos_token_id == tokenizer.eos_id and auto.model_max_length == BLOCK
    for text in CORPUS[:3]:
        ids = tokenizer.encode(text)
        assert auto(text)["input_ids"] == ids == core.encode(text, add_special_tokens=False).ids
        assert "token_type_ids" not in auto(text)  # GPT-2 would add them to the embeddings
        assert auto.decode(ids) == tokenizer.decode(ids) == text


def test_pipeline_generates_and_never_picks_padding(tmp_path):
    tok = build_tokenizer(TrainingConfig(tokenizer="char"), CORPUS)
    model = random_gpt(tok.vocab_size, seed=1)
    with torch.no_grad():  # make the untrained padding rows the likeliest tokens by far
        model.tok_emb.weight[tok.vocab_size:] *= 200
    folder = hf_folder(model, tok, tmp_path / "hf")
    generator = pipeline("text-generation", model=str(folder))
    out = generator("The quick", max_new_tokens=20, do_sample=True)[0]["generated_text"]
    assert out.startswith("The quick") and len(out) > len("The quick")

    hf = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    ids = hf.generate(torch.tensor([[tok.eos_id]] * 4), max_new_tokens=BLOCK - 1,
                      min_new_tokens=BLOCK - 1, do_sample=True)
    assert ids.shape == (4, BLOCK) and int(ids.max()) < tok.vocab_size


def test_weights_changed_outside_the_library_are_refused(tmp_path):
    tok = build_tokenizer(TrainingConfig(tokenizer="byte"), [])
    folder = hf_folder(random_gpt(tok.vocab_size), tok, tmp_path / "hf")
    weights = load_file(str(folder / "model.safetensors"))
    weights["transformer.h.0.mlp.c_fc.bias"] += 0.1  # a GPT-2 fine-tuned with transformers
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(GPT2ConversionError, match="mlp.c_fc.bias is not zero"):
        load_gpt2_folder(folder, config)
    with pytest.raises(GPT2ConversionError, match="gelu"):
        load_gpt2_folder(folder, {**config, "activation_function": "gelu_new"})
    assert gpt2_config(GPTConfig(vocab_size=10, block_size=4), None)["bos_token_id"] == 0
