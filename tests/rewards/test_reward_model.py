"""Tests for grpo_custom.rewards.reward_model.RewardModelReward with a tiny offline sequence classifier."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)
from transformers.models.llama import modeling_llama
from trl.trainer.utils import get_callable_name

from grpo_custom.rewards.reward_model import NORMALIZE_EPS, RewardModelReward

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"

PROMPTS = ["Add 2 and 3.", "Name a colour", "Why?", "Write a long answer about nothing at all", "x"]
COMPLETIONS = [" 5", " blue, or maybe red", " Because.", " ok", " a much longer completion than the prompt"]
CHAT_PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
]
CHAT_COMPLETIONS = [[{"role": "assistant", "content": "hello there"}], [{"role": "assistant", "content": "4"}]]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE: the 256 byte symbols, no merges, plus <|endoftext|> and <|pad|>, with a chat template."""
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>", chat_template=CHAT_TEMPLATE
    )


def tiny_config(config_class, tokenizer):
    """Hidden 32, 2 layers, 4 heads, 2 KV heads, one label."""
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_classifier(directory: Path, arch: str = "llama") -> Path:
    """Save a random tiny sequence classifier (scores of order 1) and its tokenizer to ``directory``."""
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForSequenceClassification),
        "qwen2": (Qwen2Config, Qwen2ForSequenceClassification),
    }[arch]
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = model_class(tiny_config(config_class, tokenizer))
    nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reward_models")
    return {arch: build_tiny_classifier(root / arch, arch) for arch in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def model_dir(model_dirs):
    return model_dirs["llama"]


@pytest.fixture(scope="module")
def reference(model_dir):
    """An independently loaded copy of the classifier: score(text) = logits[0, 0], one unpadded sequence."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = build_tiny_tokenizer()

    def score(text: str, max_tokens: int | None = None) -> float:
        """The score of the text's last ``max_tokens`` tokens (RewardModelReward's truncation rule)."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids[-max_tokens:] if max_tokens is not None else ids
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    return score


def test_plain_prompts_score_prompt_plus_completion(model_dir, reference):
    reward = RewardModelReward(model_dir, device="cpu", batch_size=3)
    scores = reward(PROMPTS, COMPLETIONS)
    expected = [reference(prompt + completion) for prompt, completion in zip(PROMPTS, COMPLETIONS)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(scores) - min(scores) > 0.1  # the texts are told apart


def test_batched_scores_equal_one_by_one_scores(model_dir):
    prompts, completions = PROMPTS * 2, COMPLETIONS[::-1] * 2
    batched = RewardModelReward(model_dir, device="cpu", batch_size=4)(prompts, completions)
    single = RewardModelReward(model_dir, device="cpu", batch_size=1)(prompts, completions)
    assert batched == pytest.approx(single, abs=1e-5)


def test_conversational_prompts_use_the_chat_template(model_dir, reference):
    reward = RewardModelReward(model_dir, device="cpu", batch_size=2)
    assert reward.texts(CHAT_PROMPTS, CHAT_COMPLETIONS) == [
        "<|user|>hi\n<|assistant|>hello there\n",
        "<|system|>be brief\n<|user|>2+2?\n<|assistant|>4\n",
    ]
    scores = reward(CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert scores == pytest.approx([reference(text) for text in reward.texts(CHAT_PROMPTS, CHAT_COMPLETIONS)], abs=1e-5)


def test_conversational_prompts_without_a_chat_template_join_role_lines(model_dir, reference):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    reward = RewardModelReward(model_dir, tokenizer, device="cpu")
    texts = reward.texts(CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert texts == ["user: hi\nassistant: hello there", "system: be brief\nuser: 2+2?\nassistant: 4"]
    assert reward(CHAT_PROMPTS, CHAT_COMPLETIONS) == pytest.approx([reference(text) for text in texts], abs=1e-5)


def test_mixed_prompt_types_are_rejected(model_dir):
    reward = RewardModelReward(model_dir, device="cpu")
    with pytest.raises(TypeError, match="sample 1 has a list prompt and a str completion"):
        reward(["a", CHAT_PROMPTS[0]], ["b", "c"])


def test_truncation_is_counted_and_logged(model_dir, reference, caplog):
    reward = RewardModelReward(model_dir, device="cpu", max_length=8, name="rm")
    prompts, completions = ["abc", "abcdefgh", "a long prompt"], ["de", "ij", " and completion"]
    with caplog.at_level(logging.WARNING, logger="grpo_custom.rewards.reward_model"):
        scores = reward(prompts, completions)
    assert reward.last_truncated == 2
    assert reward.last_completion_truncated == 1  # " and completion" alone is longer than 8 tokens
    assert "rm: truncated 2 of 3 texts to max_length=8 tokens" in caplog.text
    expected = [reference(prompt + completion, max_tokens=8) for prompt, completion in zip(prompts, completions)]
    assert scores == pytest.approx(expected, abs=1e-5)
    reward(["a"], ["b"])
    assert reward.last_truncated == 0


def test_causal_lm_instance_is_rejected():
    tokenizer = build_tiny_tokenizer()
    model = LlamaForCausalLM(tiny_config(LlamaConfig, tokenizer))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no sequence-classification head"):
        RewardModelReward(model, tokenizer)
    assert type(model) is LlamaForCausalLM  # rejected before being touched


def test_causal_lm_checkpoint_is_rejected(tmp_path):
    tokenizer = build_tiny_tokenizer()
    LlamaForCausalLM(tiny_config(LlamaConfig, tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"architectures \['LlamaForCausalLM'\]\) has no weights for the classification head \['score.weight'\]",
    ):
        RewardModelReward(tmp_path, device="cpu")


class LengthScorer(nn.Module):
    """A custom (non-transformers) reward model: score = number of non-pad tokens, or wrongly shaped logits."""

    def __init__(self, wrong_shape: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.wrong_shape = wrong_shape

    def forward(self, input_ids, attention_mask):
        if self.wrong_shape:
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, 5))  # [B, T, V] like a causal LM
        return types.SimpleNamespace(logits=(attention_mask.sum(dim=1, keepdim=True) * self.scale).float())  # [B, 1]


def test_custom_module_is_probed_for_logits():
    tokenizer = build_tiny_tokenizer()
    reward = RewardModelReward(LengthScorer(), tokenizer, batch_size=2)
    assert reward(["ab", "abcd", "a"], ["c", "e", ""]) == [3.0, 5.0, 1.0]
    with pytest.raises(ValueError, match=r"LengthScorer has no sequence-classification head: .* shape \(1, 1, 5\)"):
        RewardModelReward(LengthScorer(wrong_shape=True), tokenizer)


def test_model_instance_requires_its_tokenizer(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="LlamaForSequenceClassification.*needs its tokenizer"):
        RewardModelReward(model)


def test_pad_token_must_match_the_model(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.config.pad_token_id = 0
    with pytest.raises(ValueError, match="model.config.pad_token_id is 0 but the tokenizer pads with 257"):
        RewardModelReward(model, build_tiny_tokenizer())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"normalize": "zscore"}, ValueError, "normalize must be one of"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"max_length": True}, ValueError, "max_length must be a positive int"),
        ({"name": ""}, ValueError, "name must be a non-empty string"),
        ({"torch_dtype": "float16"}, TypeError, "torch_dtype must be a torch.dtype"),
        ({"load_in_4bit": True, "offload_to_cpu": True}, ValueError, "offload_to_cpu cannot move a 4-bit"),
    ],
)
def test_invalid_options(model_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        RewardModelReward(model_dir, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_load_in_4bit_needs_cuda(model_dir):
    with pytest.raises(ValueError, match="load_in_4bit=True needs a CUDA GPU"):
        RewardModelReward(model_dir, load_in_4bit=True)


def test_name_is_what_trl_logs(model_dir):
    assert get_callable_name(RewardModelReward(model_dir, device="cpu")) == "reward_model"
    assert get_callable_name(RewardModelReward(model_dir, device="cpu", name="helpfulness")) == "helpfulness"


def test_normalize_batch_z_scores_within_the_call(model_dir):
    raw = RewardModelReward(model_dir, device="cpu")(PROMPTS, COMPLETIONS)
    normalized = RewardModelReward(model_dir, device="cpu", normalize="batch")(PROMPTS, COMPLETIONS)
    mean, std = statistics.fmean(raw), statistics.stdev(raw)
    assert normalized == pytest.approx([(score - mean) / (std + NORMALIZE_EPS) for score in raw], abs=1e-9)
    assert RewardModelReward(model_dir, device="cpu", normalize="batch")(["a"], ["b"]) == [0.0]


def test_normalize_running_uses_all_scores_so_far_and_round_trips(model_dir):
    raw_reward = RewardModelReward(model_dir, device="cpu")
    first, second = (PROMPTS[:3], COMPLETIONS[:3]), (PROMPTS[3:], COMPLETIONS[3:])
    raw = raw_reward(*first) + raw_reward(*second)
    reward = RewardModelReward(model_dir, device="cpu", normalize="running")
    reward(*first)
    out = reward(*second)
    mean, std = statistics.fmean(raw), statistics.stdev(raw)
    assert out == pytest.approx([(score - mean) / (std + NORMALIZE_EPS) for score in raw[3:]], abs=1e-9)

    restored = RewardModelReward(model_dir, device="cpu", normalize="running")
    restored.load_state_dict(json.loads(json.dumps(reward.state_dict())))
    assert restored(PROMPTS, COMPLETIONS) == reward(PROMPTS, COMPLETIONS)  # bitwise
    with pytest.raises(ValueError, match="normalize='running'"):
        RewardModelReward(model_dir, device="cpu", normalize="batch").load_state_dict(reward.state_dict())


def test_offload_moves_the_model_to_device_only_while_scoring(model_dir, monkeypatch):
    reward = RewardModelReward(model_dir, device="cpu", offload_to_cpu=True)
    assert all(parameter.device.type == "cpu" for parameter in reward.model.parameters())
    events = []
    monkeypatch.setattr(reward, "device", torch.device("meta"))  # stands in for a GPU; .to and forward are fakes
    monkeypatch.setattr(reward.model, "to", lambda device: events.append(("to", str(device))) or reward.model)
    monkeypatch.setattr(
        reward.model,
        "forward",
        lambda **kwargs: events.append("forward")
        or types.SimpleNamespace(logits=torch.zeros(kwargs["input_ids"].shape[0], 1)),
    )
    reward(["a", "b", "c"], ["d", "e", "f"])
    assert events[0] == ("to", "meta") and events[-1] == ("to", "cpu")
    assert set(events[1:-1]) == {"forward"}


def test_isolation_against_a_simulated_unsloth_patch(model_dir, reference, monkeypatch):
    """Unsloth's pre_patch, simulated: a rotary class that cannot be built and a LlamaModel.forward that fails."""
    expected = [reference(prompt + completion) for prompt, completion in zip(PROMPTS, COMPLETIONS)]
    built_before = RewardModelReward(model_dir, device="cpu")

    def unsloth_forward(*args, **kwargs):
        raise RuntimeError("patched LlamaModel.forward ran")

    def unsloth_rotary_init(self, *args, **kwargs):
        raise RuntimeError("patched rotary embedding built")

    unsloth_forward.__module__ = "unsloth.models.llama"
    rotary = type(
        "LlamaRotaryEmbedding", (nn.Module,), {"__init__": unsloth_rotary_init, "__module__": "unsloth.models.llama"}
    )
    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", unsloth_forward)
    monkeypatch.setattr(modeling_llama, "LlamaRotaryEmbedding", rotary)
    with pytest.raises(RuntimeError, match="patched rotary embedding built"):
        AutoModelForSequenceClassification.from_pretrained(model_dir)  # what an unprotected load hits

    built_after = RewardModelReward(model_dir, device="cpu")
    assert modeling_llama.LlamaRotaryEmbedding is rotary  # the swap during loading was undone
    assert built_before(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
    assert built_after(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def test_unsloth_replaced_init_is_rejected_at_load(model_dir, monkeypatch):
    def unsloth_init(self, *args, **kwargs):
        raise AssertionError("must not be called")

    unsloth_init.__module__ = "unsloth.models.llama"
    monkeypatch.setattr(modeling_llama.LlamaAttention, "__init__", unsloth_init)
    with pytest.raises(
        ValueError, match="Unsloth replaced LlamaAttention.__init__ in transformers.models.llama.modeling_llama"
    ):
        RewardModelReward(model_dir, device="cpu")


def test_model_built_with_unsloth_classes_is_rejected(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    unsloth_class = type("LlamaRotaryEmbedding", (nn.Module,), {"__module__": "unsloth.models.llama"})
    model.model.rotary_emb = unsloth_class()
    with pytest.raises(
        ValueError, match=r"submodule model.rotary_emb \(LlamaRotaryEmbedding\) was built or patched by Unsloth"
    ):
        RewardModelReward(model, build_tiny_tokenizer())


UNSLOTH_CHILD = """
import json, sys
import unsloth  # patches transformers at import
import torch
torch.set_num_threads(1)
from transformers import AutoModelForSequenceClassification
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from unsloth.models.llama import FastLlamaModel
from unsloth.models.qwen2 import FastQwen2Model
from grpo_custom.rewards.reward_model import RewardModelReward

dirs, samples = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def score(reward):
    plain = reward(samples["prompts"], samples["completions"])
    return plain + reward(samples["chat_prompts"], samples["chat_completions"])

result = {"early": {arch: score(RewardModelReward(path, device="cpu", batch_size=2)) for arch, path in dirs.items()}}
FastLlamaModel.pre_patch()  # what FastLanguageModel.from_pretrained runs for a Llama / Qwen2 policy
FastQwen2Model.pre_patch()
result["late"] = {arch: score(RewardModelReward(path, device="cpu", batch_size=2)) for arch, path in dirs.items()}
result["patched"] = [
    modeling_llama.LlamaModel.forward.__module__, modeling_llama.LlamaRotaryEmbedding.__module__,
    modeling_qwen2.Qwen2Model.forward.__module__, modeling_qwen2.Qwen2RotaryEmbedding.__module__,
]
try:
    AutoModelForSequenceClassification.from_pretrained(dirs["llama"])
    result["unprotected_load"] = "loaded"
except Exception as error:
    result["unprotected_load"] = type(error).__name__
print("RESULT " + json.dumps(result))
"""


@pytest.mark.unsloth
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is not installed")
def test_scores_unchanged_under_unsloth_patching(model_dirs, tmp_path):
    samples = {
        "prompts": PROMPTS,
        "completions": COMPLETIONS,
        "chat_prompts": CHAT_PROMPTS,
        "chat_completions": CHAT_COMPLETIONS,
    }
    expected = {}
    for arch, path in model_dirs.items():
        reward = RewardModelReward(path, device="cpu", batch_size=2)
        expected[arch] = reward(PROMPTS, COMPLETIONS) + reward(CHAT_PROMPTS, CHAT_COMPLETIONS)
    env = dict(
        os.environ,
        UNSLOTH_ALLOW_CPU="1",
        UNSLOTH_COMPILE_DISABLE="1",
        UNSLOTH_IS_PRESENT="1",
        UNSLOTH_COMPILE_LOCATION=str(tmp_path / "unsloth_cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    dirs = json.dumps({arch: str(path) for arch, path in model_dirs.items()})
    completed = subprocess.run(
        [sys.executable, "-c", UNSLOTH_CHILD, dirs, json.dumps(samples)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert all(module.startswith("unsloth") for module in result["patched"]), result["patched"]  # the patch is live
    for arch in model_dirs:
        assert result["early"][arch] == pytest.approx(expected[arch], abs=1e-6), arch
        assert result["late"][arch] == pytest.approx(expected[arch], abs=1e-6), arch
    print("unprotected load under the patch:", result["unprotected_load"])


def test_truncation_keeps_the_completion_and_cuts_the_prompt_from_the_left(model_dir, reference):
    """A ~300-character prompt with max_length=64: three completions get three scores (right truncation gave
    all three the score of the prompt's first 64 tokens: a silent zero-advantage group)."""
    reward = RewardModelReward(model_dir, device="cpu", max_length=64, name="rm")
    prompt = "Summarize the following text in one sentence, please. " * 6  # 330 characters, one token each
    completions = ["A short answer.", "Something else entirely!", "42"]
    logged = []
    scores = reward([prompt] * 3, completions, log_metric=lambda name, value: logged.append((name, value)))
    assert len(set(scores)) == 3
    assert scores == pytest.approx([reference(prompt + c, max_tokens=64) for c in completions], abs=1e-5)
    assert logged == [("reward_model/rm/truncated_frac", 1.0), ("reward_model/rm/completion_truncated_frac", 0.0)]


def test_max_length_above_the_position_limit_is_rejected_at_construction(model_dir):
    with pytest.raises(ValueError, match=r"max_length=257 exceeds the reward model's position limit .*=256"):
        RewardModelReward(model_dir, device="cpu", max_length=257)
    RewardModelReward(model_dir, device="cpu", max_length=256)
