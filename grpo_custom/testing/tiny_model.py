"""An offline tiny causal LM and tokenizer, built locally (no hub access), for the demo and tests.

The tokenizer is byte-level BPE with the 256 byte symbols and no merges (every byte is a token),
plus ``<|endoftext|>``, ``<|pad|>`` and chat markers, with a simple chat template. The model is a
random ``Qwen2ForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads; ~140K parameters) or
``LlamaForCausalLM``; both are saved with ``save_pretrained`` and loaded back from a directory.
"""
from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    """A byte-level ``PreTrainedTokenizerFast`` (256 byte tokens + specials) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token=None,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, *, architecture: str = "qwen2", hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                     initializer_range: float = 0.2):
    """A random tiny causal LM sized to ``tokenizer`` (``architecture``: ``"qwen2"``, ``"llama"``, ``"qwen3"`` or
    ``"gemma3"``, the text model of Gemma 3; the last two with head_dim = hidden_size / 4 heads).

    ``initializer_range`` is larger than the usual 0.02 so the tied embeddings give logits of order
    one: a policy whose logits sit near zero is near-uniform and barely moves under RL.
    """
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM),
               "qwen3": (Qwen3Config, Qwen3ForCausalLM), "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM)}
    if architecture not in classes:
        raise ValueError(f"architecture={architecture!r}; choose one of {sorted(classes)}.")
    config_class, model_class = classes[architecture]
    extra = {"head_dim": hidden_size // 4} if architecture in ("qwen3", "gemma3") else {}  # their default is 128+
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(directory: str | Path, *, architecture: str = "qwen2", seed: int = 0) -> Path:
    """Build the tiny tokenizer and model and ``save_pretrained`` both into ``directory``."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, architecture=architecture, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_tiny_model(directory: str | Path):
    """Load ``(model, tokenizer)`` saved by :func:`save_tiny_model`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="float32")
    return model, tokenizer
