"""Tiny random models for offline tests and quick experiments.

``tiny_llama()`` and ``tiny_gpt2()`` build randomly initialised models from a config (a
Llama with grouped-query attention, a GPT-2 whose vocabulary differs from its width),
each with a real byte-level BPE tokenizer trained on a few sentences. Model and
tokenizer are saved to a folder and loaded back through ``load_model(folder)``, the
same path a user's local checkpoint takes. Nothing touches the network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.models import load_model

_CORPUS = [
    "Q: What happens if you crack your knuckles a lot? A: Nothing in particular happens.",
    "Q: Is the Great Wall of China visible from space? A: No, it is too narrow to see.",
    "Q: How long do goldfish remember things? A: Goldfish remember things for months.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Interpret each question literally, and as a question about the real world.",
    "I have no comment. Yes. No. True. False. The answer is 42 degrees at 100 metres.",
    "Premise: the man broke his toe. What was the cause? He dropped a hammer on his foot.",
    "positive negative neutral entailment contradiction because therefore however",
]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _build_tokenizer(folder: Path, *, prepends_bos: bool, vocab_size: int) -> None:
    """Train a byte-level BPE tokenizer on the corpus and save it as an HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    if prepends_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    wrapped.chat_template = _CHAT_TEMPLATE
    # A tokenizer that only ever lived in memory fails inside the bridge; saving it and
    # loading it back gives it the name_or_path and files the bridge expects.
    wrapped.save_pretrained(folder)


def build_tiny_model_folder(
    kind: Literal["llama", "gpt2"], folder: str | Path, *, seed: int = 0
) -> Path:
    """Write a random tiny model and its tokenizer to ``folder``; return the folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    vocab_size = 384
    _build_tokenizer(folder, prepends_bos=(kind == "llama"), vocab_size=vocab_size)
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=48,
            n_layer=3,
            n_head=4,
            n_positions=1024,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected 'llama' or 'gpt2'")
    model.save_pretrained(folder)
    return folder


def _tiny(kind: Literal["llama", "gpt2"], seed: int) -> TransformerBridge:
    folder = Path(tempfile.mkdtemp(prefix=f"fasb_lens_tiny_{kind}_"))
    return load_model(build_tiny_model_folder(kind, folder, seed=seed), device="cpu")


def tiny_llama(seed: int = 0) -> TransformerBridge:
    """A random 4-layer Llama (4 query heads sharing 2 KV heads, d_head 16); prepends BOS."""
    return _tiny("llama", seed)


def tiny_gpt2(seed: int = 0) -> TransformerBridge:
    """A random 3-layer GPT-2 (4 heads of 12, vocabulary 384 != width 48); no BOS."""
    return _tiny("gpt2", seed)
