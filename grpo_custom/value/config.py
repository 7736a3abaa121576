"""``ValueFunctionConfig``: the ``value_function`` option of ``GRPOConfig``, validated once at construction.

A learned value function V(s_t) (the critic) for GAE(γ, λ) advantages (Schulman et al. 2016, arXiv 1506.02438).
Defaults follow the peers (GUIDE §11): verl's value clip 0.5, VC-PPO's decoupled λ (critic 1.0, the policy's
own λ on the ``gae`` estimator; arXiv 2503.01491) and value pretraining (``warmup_steps``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

KINDS = ("head", "shared_head", "adapter")


@dataclass(frozen=True)
class ValueFunctionConfig:
    """The critic's settings (``GRPOConfig(value_function={...})``).

    Fields:
        kind: ``"head"`` (default): a linear head on the policy's hidden states behind a stop-gradient; only the
            head trains. ``"shared_head"``: the same head, but ``coef`` × the value loss also reaches the policy's
            trainable weights (its LoRA) through the hidden states. ``"adapter"``: a second LoRA adapter on the same
            base model (the policy's LoRA settings, its own weights) under the head: the closest to a separate
            critic model, at LoRA cost; it costs one more forward and backward of the base model per micro-batch
            (the policy's adapter is off during it) and needs a PEFT LoRA policy on one process or DDP.
        layers: which hidden states the head reads, numbered as Hugging Face's ``output_hidden_states``
            (0 = embeddings, i = output of decoder layer i, -1 = the last, normed hidden state); several are
            each layer-normed and concatenated.
        lr: the head's learning rate (its own AdamW, betas (0.9, 0.999), no weight decay).
        adapter_lr: the critic adapter's learning rate (``adapter`` only; None: ``lr``), in the same AdamW.
        coef: the value loss's weight in the policy's gradient (``shared_head`` only, default 0.1; another kind
            refuses it): the policy's weights get coef·∇L_V, the head its own ∇L_V (its optimizer, learning rate
            and gradient clipping do not depend on ``coef``).
        cliprange_value: c of the clipped value loss 0.5·max((V−R)², (V_old + clip(V−V_old, ±c) − R)²).
        lam: the critic's λ: the returns R = GAE_λ + V_old it fits (VC-PPO: 1.0). The policy's λ and the
            discount γ (shared by both) are the ``gae`` estimator's options
            (``advantage_estimator_kwargs={"gamma": ..., "lam": 0.95 or "adaptive", "alpha": 0.05}``).
        warmup_steps: optimizer steps at the start in which only the critic trains (the policy stays frozen):
            VC-PPO's value pretraining. They count as trainer steps (``max_steps`` includes them).
        max_grad_norm: the head's own gradient clipping (None: none).
        time_feature: the completion position t / ``max_completion_length`` is one more input of the head (the
            value of a time-limited episode depends on the time left: Pardo et al. 2018, arXiv 1712.00378).
    """

    kind: str = "head"
    layers: tuple = (-1,)
    lr: float = 1e-3
    adapter_lr: float | None = None
    coef: float | None = None
    cliprange_value: float = 0.5
    lam: float = 1.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    time_feature: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"value_function['kind']={self.kind!r} is not valid; choose one of {list(KINDS)}.")
        layers = self.layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        if (not isinstance(layers, (list, tuple)) or not layers
                or any(not isinstance(i, int) or isinstance(i, bool) for i in layers)):
            raise ValueError(f"value_function['layers'] must be a non-empty list of ints, got {self.layers!r}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"value_function['layers'] lists a layer twice: {list(layers)}.")
        object.__setattr__(self, "layers", tuple(layers))
        _positive("lr", self.lr)
        if self.adapter_lr is not None:
            _positive("adapter_lr", self.adapter_lr)
            if self.kind != "adapter":
                raise ValueError(f"value_function['adapter_lr'] is the critic adapter's learning rate, but kind="
                                 f"{self.kind!r} has no adapter; drop it or set kind='adapter'.")
        if self.coef is not None and self.kind != "shared_head":
            raise ValueError(f"value_function['coef'] weighs the value loss in the policy's gradient, which only kind="
                             f"'shared_head' has (kind={self.kind!r}); drop it or set kind='shared_head'.")
        if self.kind == "shared_head":
            object.__setattr__(self, "coef", 0.1 if self.coef is None else self.coef)
            _finite_number("coef", self.coef, low=0.0)
        _positive("cliprange_value", self.cliprange_value)
        _finite_number("lam", self.lam, low=0.0, high=1.0)
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"value_function['warmup_steps'] must be an int >= 0, got {self.warmup_steps!r}.")
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)
        if not isinstance(self.time_feature, bool):
            raise ValueError(f"value_function['time_feature'] must be True or False, got {self.time_feature!r}.")

    def to_dict(self) -> dict:
        """Plain JSON values (for checkpoints, the resume fingerprint and ``save_model``)."""
        result = asdict(self)
        result["layers"] = list(self.layers)
        return result


def parse_value_function(value) -> ValueFunctionConfig | None:
    """``GRPOConfig.value_function`` → :class:`ValueFunctionConfig` (None stays None).

    Accepts a ``ValueFunctionConfig`` or a dict of its fields. Raises ``TypeError``/``ValueError`` naming the
    option: an unknown key (listing the valid ones), a bad value.
    """
    if value is None or isinstance(value, ValueFunctionConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"value_function must be a dict of critic options or a ValueFunctionConfig, "
                        f"got {type(value).__name__}.")
    valid = [f.name for f in fields(ValueFunctionConfig)]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"value_function has unknown option(s) {unknown}; valid options: {valid}.")
    return ValueFunctionConfig(**value)


def _finite_number(name, value, *, low=None, high=None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"value_function['{name}'] must be a finite number, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"value_function['{name}']={value!r} is outside [{low}, {high}].")


def _positive(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"value_function['{name}'] must be a finite number > 0, got {value!r}.")


__all__ = ["KINDS", "ValueFunctionConfig", "parse_value_function"]
