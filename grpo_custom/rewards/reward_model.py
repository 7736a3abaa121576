"""A learned reward model (sequence classifier) as a TRL reward function, isolated from Unsloth's patches.

Score of a completion: ``s = logits[:, 0]`` of a sequence-classification model on prompt + completion,
the logit TRL itself reads for model rewards (``GRPOTrainer._calculate_rewards``). **Higher is better**:
GRPO maximizes it. Optionally z-scored per call or with running statistics. The model is isolated from
Unsloth's patching of transformers by :mod:`grpo_custom.rewards.model_isolation`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from grpo_custom.algorithms.sharding import is_sharded, replicated_loading
from grpo_custom.rewards.guard import classify_reward_tensor
from grpo_custom.rewards.model_isolation import _unpatched_construction, isolate_from_unsloth
from grpo_custom.rewards.reward_model_stats import position_limit, rows_of_all_processes
from grpo_custom.rewards.tasks.moments import RunningMoments

logger = logging.getLogger(__name__)

NORMALIZE_EPS = 1e-4
DEFAULT_MAX_LENGTH = 1024


# ----------------------------------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------------------------------


def _check_4bit_available() -> None:
    """4-bit loading needs a CUDA GPU and bitsandbytes."""
    if not torch.cuda.is_available():
        raise ValueError(
            "RewardModelReward: load_in_4bit=True needs a CUDA GPU (bitsandbytes 4-bit); none is available."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("RewardModelReward: load_in_4bit=True needs bitsandbytes (pip install bitsandbytes).")


def _load_sequence_classifier(
    path: str, device: torch.device, dtype: torch.dtype | None, load_in_4bit: bool
) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained`` without Unsloth classes; a checkpoint without
    weights for its classification head (e.g. a causal LM) is an error instead of a random head."""
    config = AutoConfig.from_pretrained(path)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype or torch.bfloat16
        )
        kwargs["device_map"] = {"": device}
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ValueError(
            f"RewardModelReward: {path!r} is a {type(config).__name__} checkpoint, which has no "
            "sequence-classification model class in transformers."
        )
    modeling_module = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)].__module__
    with _unpatched_construction(modeling_module), replicated_loading():  # whole on each rank, even under ZeRO-3
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **kwargs
        )
    base_prefix = f"{model.base_model_prefix}."
    head_missing = sorted(key for key in loading_info["missing_keys"] if not key.startswith(base_prefix))
    if head_missing:
        raise ValueError(
            f"RewardModelReward: the checkpoint at {path!r} (architectures {getattr(config, 'architectures', None)}) "
            f"has no weights for the classification head {head_missing} of {type(model).__name__}; it is not a "
            "sequence-classification reward model (a causal LM checkpoint would get a random head)."
        )
    return model


def _reject_other_transformers_heads(model: nn.Module) -> None:
    """A transformers model is named after its head: anything but ``*ForSequenceClassification`` (a causal
    LM, a bare base model, ...) has no classification head. Checked before the model is touched."""
    class_name = type(model).__name__
    if isinstance(model, PreTrainedModel) and not class_name.endswith("ForSequenceClassification"):
        raise ValueError(
            f"RewardModelReward: {class_name} has no sequence-classification head (its class name does not end "
            "in 'ForSequenceClassification'); load the reward model with AutoModelForSequenceClassification "
            "(score = logits[:, 0])."
        )


def _probe_classification_head(model: nn.Module, device: torch.device) -> None:
    """A module not named ``*ForSequenceClassification`` (a custom module, a PEFT causal-LM wrapper) must
    return ``logits`` of shape [1, num_labels] for one token."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        return
    probe_ids = torch.zeros((1, 1), dtype=torch.long, device=device)  # [1, 1], any valid token id
    with torch.no_grad():
        logits = getattr(model(input_ids=probe_ids, attention_mask=torch.ones_like(probe_ids)), "logits", None)
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[0] == 1 and logits.shape[1] >= 1:
        return
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
    raise ValueError(
        f"RewardModelReward: {type(model).__name__} has no sequence-classification head: for one sequence its "
        f"output logits have shape {shape}, expected (1, num_labels)."
    )


def _check_padding(model: nn.Module, tokenizer: Any) -> None:
    """Right padding needs a pad token, and the model must locate the last real token with the same id."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ValueError("RewardModelReward: the reward tokenizer has no pad token; set tokenizer.pad_token.")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return
    model_pad = config.get_text_config().pad_token_id
    if model_pad != tokenizer.pad_token_id:
        raise ValueError(
            f"RewardModelReward: model.config.pad_token_id is {model_pad!r} but the tokenizer pads with "
            f"{tokenizer.pad_token_id!r}; the classifier reads the last non-pad token, so they must agree."
        )


def _is_messages(value: Any) -> bool:
    """A conversational turn list: a non-empty list of ``{"role", "content"}`` dicts."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(message, Mapping) and "role" in message and "content" in message for message in value)
    )


def _batch_z_score(scores: torch.Tensor) -> torch.Tensor:
    """(s − mean) / (std + eps) over the call's non-NaN scores, Bessel std (0 for a single score); NaN stays NaN."""
    present = scores[~torch.isnan(scores)]
    std = present.std() if present.numel() > 1 else torch.zeros((), dtype=scores.dtype)
    return (scores - present.mean()) / (std + NORMALIZE_EPS)


# ----------------------------------------------------------------------------------------------------------------------
# The reward function
# ----------------------------------------------------------------------------------------------------------------------


class RewardModelReward:
    """Reward s_i = logits[i, 0] of a sequence-classification reward model on prompt_i + completion_i.

    Higher is better (the sign TRL uses for model rewards). Text per sample: for conversational data
    (lists of ``{"role", "content"}``) the messages ``prompt + completion`` through the reward
    tokenizer's chat template (``tokenize=False``), or ``"role: content"`` lines when it has none; for
    plain data ``prompt + completion``. Tokenized without special tokens (as TRL does), right-padded, scored
    in batches of ``batch_size`` under ``torch.no_grad()`` in eval mode.

    Truncation: a text longer than ``max_length`` tokens keeps its **last** ``max_length`` tokens, whatever the
    tokenizer's ``truncation_side``: the prompt is cut from the left and the completion is kept whole. A
    completion longer than ``max_length`` by itself keeps its last ``max_length`` tokens (no prompt at all):
    the end, where a classifier reads its score and answers are. Counts: :attr:`last_truncated` (texts cut),
    :attr:`last_completion_truncated` (texts whose completion was cut), a warning, and the metrics
    ``reward_model/<name>/truncated_frac`` and ``/completion_truncated_frac`` through TRL's ``log_metric``.
    ``max_length`` above the model's ``max_position_embeddings`` is an error at construction.

    Normalization: ``"batch"``: ŝ = (s − mean) / (std + 1e-4) over the call (Bessel std);
    ``"running"``: ŝ = (s − μ) / (σ + 1e-4) with :class:`~grpo_custom.rewards.tasks.RunningMoments` over all
    calls, updated with this call's scores first (state in :meth:`state_dict`). In a ``torch.distributed``
    run (DDP) both use the scores of the whole batch across processes (gathered in rank order), so every
    process normalizes alike and holds the same running statistics. The model is isolated from Unsloth's
    patching (see the module docstring).

    Args:
        model_or_path: a checkpoint path (loaded with ``AutoModelForSequenceClassification`` and
            ``AutoTokenizer``) or a model instance (then ``tokenizer`` is required).
        tokenizer: the reward model's tokenizer (overrides the checkpoint's).
        batch_size: sequences per forward.
        max_length: longest tokenized text kept, at most the model's ``max_position_embeddings``; default
            the smaller of 1024 and that limit.
        device: where to score; default: a path loads onto CUDA if available else CPU, an instance
            stays where it is.
        torch_dtype: dtype to load a path in (``None``: the checkpoint's).
        load_in_4bit: load a path in 4-bit with bitsandbytes (CUDA only).
        normalize: ``None``, ``"batch"`` or ``"running"``.
        offload_to_cpu: keep the model on CPU between calls (moved to ``device`` only to score), so it
            holds no GPU memory during the policy update.
        name: ``__name__`` (TRL's metric name); default ``"reward_model"``.
    """

    NORMALIZE_MODES = (None, "batch", "running")

    def __init__(
        self,
        model_or_path: str | os.PathLike | nn.Module,
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        load_in_4bit: bool = False,
        normalize: str | None = None,
        offload_to_cpu: bool = False,
        name: str | None = None,
    ):
        for option, value in (("batch_size", batch_size), ("max_length", 1 if max_length is None else max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RewardModelReward: {option} must be a positive int, got {value!r}.")
        if normalize not in self.NORMALIZE_MODES:
            raise ValueError(
                f"RewardModelReward: normalize must be one of {list(self.NORMALIZE_MODES)}, got {normalize!r}."
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"RewardModelReward: name must be a non-empty string, got {name!r}.")
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise TypeError(f"RewardModelReward: torch_dtype must be a torch.dtype, got {torch_dtype!r}.")
        if load_in_4bit and offload_to_cpu:
            raise ValueError(
                "RewardModelReward: offload_to_cpu cannot move a 4-bit (bitsandbytes) model; use one or the other."
            )

        if isinstance(model_or_path, (str, os.PathLike)):
            if load_in_4bit:
                _check_4bit_available()
            path = os.fspath(model_or_path)
            self.device = torch.device(
                device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
            )
            model = _load_sequence_classifier(path, self.device, torch_dtype, load_in_4bit)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        elif isinstance(model_or_path, nn.Module):
            if tokenizer is None:
                raise ValueError(
                    f"RewardModelReward: a model instance ({type(model_or_path).__name__}) needs its tokenizer; "
                    "pass tokenizer=..."
                )
            if load_in_4bit or torch_dtype is not None:
                raise ValueError(
                    "RewardModelReward: load_in_4bit and torch_dtype apply when loading from a path; "
                    "quantize or cast a model instance yourself."
                )
            model = model_or_path
            if any(is_sharded(parameter) for parameter in model.parameters()):
                raise ValueError(
                    f"RewardModelReward: the model instance ({type(model).__name__}) has parameters sharded by "
                    "FSDP2 or DeepSpeed ZeRO-3; each process scores with a whole copy: pass a path (loaded whole "
                    "on every rank) or an unsharded model."
                )
            first_parameter = next(model.parameters(), None)
            default_device = first_parameter.device if first_parameter is not None else torch.device("cpu")
            self.device = torch.device(device) if device is not None else default_device
        else:
            raise TypeError(
                "RewardModelReward: model_or_path must be a checkpoint path or a torch.nn.Module, "
                f"got {type(model_or_path).__name__}."
            )

        _reject_other_transformers_heads(model)
        _check_padding(model, tokenizer)
        limit = position_limit(model)
        if max_length is None:
            max_length = DEFAULT_MAX_LENGTH if limit is None else min(DEFAULT_MAX_LENGTH, limit)
        elif limit is not None and max_length > limit:
            raise ValueError(
                f"RewardModelReward: max_length={max_length} exceeds the reward model's position limit "
                f"(config max_position_embeddings={limit}); pass max_length <= {limit}."
            )
        if not load_in_4bit:
            model.to(self.device)
        self.model = isolate_from_unsloth(model).eval()
        _probe_classification_head(self.model, self.device)
        if offload_to_cpu:
            self.model.to("cpu")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.offload_to_cpu = offload_to_cpu
        self.moments = RunningMoments() if normalize == "running" else None
        self.last_truncated = 0
        self.last_completion_truncated = 0
        self.__name__ = name or "reward_model"
        self._forward_kwargs = {"use_cache": False} if isinstance(model, PreTrainedModel) else {}

    def texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
        """The text scored for each (prompt, completion) pair (see the class docstring)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts for {len(completions)} completions.")
        texts = []
        for index, (prompt, completion) in enumerate(zip(prompts, completions)):
            if _is_messages(prompt) and _is_messages(completion):
                messages = [dict(message) for message in prompt] + [dict(message) for message in completion]
                if getattr(self.tokenizer, "chat_template", None):
                    texts.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
                else:
                    texts.append("\n".join(f"{message['role']}: {message['content']}" for message in messages))
            elif isinstance(prompt, str) and isinstance(completion, str):
                texts.append(prompt + completion)
            else:
                raise TypeError(
                    f"{self.__name__}: sample {index} has a {type(prompt).__name__} prompt and a "
                    f"{type(completion).__name__} completion; both must be strings or both lists of "
                    "{'role', 'content'} messages."
                )
        return texts

    def _token_ids(self, texts: list[str], completion_texts: list[str] | None = None) -> list[list[int]]:
        """Tokenize without special tokens, keep the last ``max_length`` tokens; sets :attr:`last_truncated`
        and, given the completions' texts, :attr:`last_completion_truncated`."""
        token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        truncated = completion_truncated = 0
        for index, ids in enumerate(token_ids):
            if len(ids) > self.max_length:
                truncated += 1
                token_ids[index] = ids[-self.max_length :]
                if completion_texts is not None:
                    completion_length = len(self.tokenizer(completion_texts[index], add_special_tokens=False)["input_ids"])
                    completion_truncated += completion_length > self.max_length
        self.last_truncated = truncated
        self.last_completion_truncated = completion_truncated
        if truncated:
            logger.warning(
                "%s: truncated %d of %d texts to max_length=%d tokens.",
                self.__name__,
                truncated,
                len(texts),
                self.max_length,
            )
        return token_ids

    def score_texts(self, texts: list[str], completion_texts: list[str] | None = None) -> torch.Tensor:
        """Raw scores ``logits[:, 0]`` for ready-made texts, float64 on CPU, [len(texts)]."""
        token_ids = self._token_ids(list(texts), completion_texts)
        order = sorted(range(len(token_ids)), key=lambda index: -len(token_ids[index]))  # less padding per batch
        scores = torch.empty(len(token_ids), dtype=torch.float64)
        pad_id = self.tokenizer.pad_token_id
        if self.offload_to_cpu:
            self.model.to(self.device)
        try:
            self.model.eval()
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    width = max(len(token_ids[index]) for index in batch)
                    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
                    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
                    for row, index in enumerate(batch):
                        input_ids[row, : len(token_ids[index])] = torch.tensor(token_ids[index], dtype=torch.long)
                        attention_mask[row, : len(token_ids[index])] = 1
                    outputs = self.model(
                        input_ids=input_ids.to(self.device),
                        attention_mask=attention_mask.to(self.device),
                        **self._forward_kwargs,
                    )
                    logits = getattr(outputs, "logits", None)
                    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(batch):
                        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
                        raise ValueError(
                            f"{self.__name__}: {type(self.model).__name__} returned logits of shape {shape} for "
                            f"{len(batch)} sequences; expected ({len(batch)}, num_labels)."
                        )
                    scores[batch] = logits[:, 0].to(device="cpu", dtype=torch.float64)
        finally:
            if self.offload_to_cpu:
                self.model.to("cpu")
        return scores

    def __call__(
        self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any
    ) -> list[float]:
        """TRL reward function: one (optionally normalized) score per completion."""
        completion_texts = [
            "\n".join(str(message.get("content", "")) for message in completion) if _is_messages(completion)
            else str(completion) for completion in completions
        ]
        raw = self.score_texts(self.texts(prompts, completions), completion_texts)  # [N]
        # The guard's classification: a NaN/±inf logit (e.g. an fp16 overflow) is a bad score; it is left out of
        # the normalization statistics and returned as it is, at its index, for the trainer's guard to handle.
        scores, non_finite = classify_reward_tensor(raw, nan_means_unscored=False)  # [N], NaN where bad
        log_metric = kwargs.get("log_metric")
        if self.normalize is not None or callable(log_metric):
            n = len(scores)
            counts = torch.tensor([self.last_truncated, self.last_completion_truncated, n], dtype=scores.dtype)
            rows, rank = rows_of_all_processes(torch.cat([scores, counts]))  # [P, n + 3]
            all_scores, totals = rows[:, :n].reshape(-1), rows[:, n:].sum(0)  # [P·n], [3]
            mine = slice(rank * n, (rank + 1) * n)
            if callable(log_metric):
                log_metric(f"reward_model/{self.__name__}/truncated_frac", float(totals[0] / totals[2]))
                log_metric(f"reward_model/{self.__name__}/completion_truncated_frac", float(totals[1] / totals[2]))
            if self.normalize == "batch":
                scores = _batch_z_score(all_scores)[mine]
            elif self.normalize == "running":
                self.moments.update(all_scores)
                scores = ((all_scores - self.moments.mean) / (self.moments.std + NORMALIZE_EPS))[mine]
        return torch.where(non_finite, raw, scores).tolist()

    def state_dict(self) -> dict:
        """JSON-serializable state: the normalize mode and running statistics (``None`` unless ``"running"``)."""
        return {"normalize": self.normalize, "moments": None if self.moments is None else self.moments.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the normalize mode must match."""
        if state.get("normalize") != self.normalize:
            raise ValueError(
                f"{self.__name__}.load_state_dict: state has normalize={state.get('normalize')!r}, this reward "
                f"normalize={self.normalize!r}."
            )
        if self.moments is not None:
            self.moments.load_state_dict(state["moments"])
