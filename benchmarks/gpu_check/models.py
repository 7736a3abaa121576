"""GPU check, part "models": random-weight Qwen2.5-0.5B and -1.5B, real architectures and sizes, built locally.

    python benchmarks/gpu_check/models.py --out-dir DIR --result PATH [--smoke] [--only NAME ...]

Nothing is downloaded. Each model is ``Qwen2ForCausalLM`` with its published configuration (hidden size,
layers, heads, KV heads, intermediate size, vocabulary 151,936, tied embeddings, RoPE θ 1e6), random weights
(normal, std 0.02), bfloat16, saved with ``save_pretrained`` next to a byte-level BPE tokenizer whose
vocabulary has exactly 151,936 entries: the 256 byte symbols, filler tokens of 2-3 letters up to Qwen's
151,643 regular tokens (reachable by id only: the tokenizer has no merges, so text encodes byte by byte),
then ``<|endoftext|>`` (151,643), ``<|im_start|>``, ``<|im_end|>``, ``<|pad|>`` and reserved specials.
Generated ids decode to letters, so text rewards vary on a random model's output.

``--smoke``: the same two configurations shrunk (hidden 64, 2 layers, 4 heads, 2 KV heads) with a
512-entry tokenizer, built on CPU in float32.
"""
from __future__ import annotations

import argparse
import itertools
import json
import string
import time
from pathlib import Path

from gpu_check_common import ResultFile, configure_environment

QWEN_VOCAB = 151936
QWEN_REGULAR_TOKENS = 151643  # ids below <|endoftext|> in Qwen2.5's tokenizer
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Published Qwen2.5 configurations (config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B).
CONFIGS = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, max_window_layers=24),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, max_window_layers=21),
}
SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, max_window_layers=2)
SMOKE_VOCAB = 512


def build_tokenizer(vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` entries (see the module doc)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    regular = QWEN_REGULAR_TOKENS if vocab_size == QWEN_VOCAB else max(len(byte_symbols) + 64, vocab_size - 64)
    if regular + len(SPECIALS) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is too small")
    letters = string.ascii_lowercase + string.ascii_uppercase + string.digits + "Ġ_"  # all in the byte alphabet
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
    for width in (2, 3):
        for combo in itertools.product(letters, repeat=width):
            if len(vocab) == regular:
                break
            vocab.setdefault("".join(combo), len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    reserved = [f"<|reserved_{index}|>" for index in range(vocab_size - regular - len(SPECIALS))]
    backend.add_special_tokens(SPECIALS + reserved)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                        bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != vocab_size:
        raise AssertionError(f"tokenizer has {len(tokenizer)} entries, wanted {vocab_size}")
    return tokenizer


def build_model(name: str, tokenizer, *, smoke: bool, device: str, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = SMOKE_SHAPE if smoke else CONFIGS[name]
    config = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False, initializer_range=0.02,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    dtype = torch.float32 if smoke else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--result", default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    options = parser.parse_args(argv)
    configure_environment(options.smoke)
    result = ResultFile(options.result)
    import torch

    device = "cpu" if options.smoke else "cuda"
    started = time.perf_counter()
    tokenizer = build_tokenizer(SMOKE_VOCAB if options.smoke else QWEN_VOCAB)
    result.set("tokenizer", {"entries": len(tokenizer), "build_s": round(time.perf_counter() - started, 2),
                             "eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id})
    for name in options.only:
        directory = Path(options.out_dir) / name
        started = time.perf_counter()
        model = build_model(name, tokenizer, smoke=options.smoke, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        built = time.perf_counter()
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        saved = time.perf_counter()
        embedding = model.get_input_embeddings().weight.numel()
        figures = {
            "dir": str(directory),
            "parameters": model.num_parameters(),
            "non_embedding_parameters": model.num_parameters() - embedding,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "config": {key: getattr(model.config, key) for key in
                       ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                        "intermediate_size", "vocab_size", "tie_word_embeddings")},
            "build_s": round(built - started, 2),
            "save_s": round(saved - built, 2),
            "disk_mib": round(sum(f.stat().st_size for f in directory.iterdir()) / 2**20, 1),
        }
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        reloaded = json.loads((directory / "config.json").read_text())
        figures["config_json_vocab"] = reloaded.get("vocab_size")
        result.set(name, figures)
        print(f"{name}: {figures}", flush=True)
    result.set("smoke", options.smoke)


if __name__ == "__main__":
    main()
