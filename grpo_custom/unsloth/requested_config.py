"""What the user wrote in Unsloth's ``GRPOConfig`` and what TRL would run for it, never stopping a config Unsloth runs.

Unsloth's config accepts more than TRL's and rewrites some values: a batch that is not a multiple of
``num_generations`` becomes ``num_generations`` (its GRPO notebooks write ``per_device_train_batch_size=1``
with ``num_generations=6``), ``warmup_ratio`` goes to ``warmup_steps``, ``max_prompt_length`` is dropped on
TRL 1.x, ``loss_type="dapo"`` turns on ``mask_truncated_completions``, and several defaults differ from TRL's.
:class:`RequestedConfig` keeps the options as written (positional arguments by name) and a reference: TRL's
config class (grpo-custom's plain fork) built from the same options. Where TRL itself rejects what Unsloth
accepted, the reference is rebuilt with Unsloth's values for the options whose running value is not the
written one or TRL's declared default (less one, where TRL refuses two derived values set together), then
with as few of those pinned as TRL needs (one less at a time);
pinned options are compared against what was written or TRL's declared default. If TRL refuses even
Unsloth's values, there is no reference and every option is compared that way. Nothing here raises
into the user's config, and the running config is never changed.

:meth:`RequestedConfig.differences` reports against the names the user wrote: a renamed option shows as
``warmup_ratio: asked 0.1, running warmup_steps=0.1`` (not ``warmup_steps: asked 0``), a dropped one as
``max_prompt_length: asked 256, running not applied (...)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import sys
import warnings
from dataclasses import dataclass, field

from grpo_custom.fork.effective_config import same_value
from grpo_custom.fork.retired_options import RETIRED_OPTIONS, accepted_options, explain_option

_MISSING = object()


@dataclass(frozen=True)
class Renamed:
    """The running value of a written option, under the name the installed TRL / transformers gives it."""

    option: str
    value: object

    def __repr__(self) -> str:
        return f"{self.option}={self.value!r}"


@dataclass(frozen=True)
class NotApplied:
    """A written option the running config does not have: nothing runs it (``reason`` says what to do)."""

    reason: str

    def __repr__(self) -> str:
        return f"not applied ({self.reason})"


@dataclass
class RequestedConfig:
    """The options as written, and TRL's config for them (see the module doc).

    Attributes:
        written: ``{option: value}`` as passed (positional arguments by parameter name).
        reference: TRL's config built from ``written`` (plus ``pinned``), or ``None`` where TRL refused every try.
        pinned: options given the running value in ``reference`` because TRL refused the written arguments.
        trl_error: TRL's error for the written arguments, where it refused them (``"ValueError: ..."``): the
            option-level refusal (e.g. a generation batch of 1 for 6 generations) where there is one, found with
            the precision options nobody wrote set to what any host runs (``HOST_NEUTRAL``).
        device_error: TRL's (transformers') refusal of its own precision defaults on this machine (``bf16`` on a
            CPU), where that is what stopped it first; ``None`` otherwise.
    """

    written: dict
    reference_class: type
    reference: object | None
    pinned: frozenset = field(default_factory=frozenset)
    trl_error: str | None = None
    device_error: str | None = None

    def written_differences(self, config) -> tuple[dict, dict]:
        """:meth:`differences` split in two: ``(options the user wrote, options Unsloth changed from TRL's value
        though nobody wrote them)``; a renamed or dropped option counts as written."""
        differences = self.differences(config)
        written = {name: pair for name, pair in differences.items() if name in self.written}
        return written, {name: pair for name, pair in differences.items() if name not in self.written}

    def renamed(self) -> dict[str, str]:
        """``{written name: installed name}`` for written options the installed TRL takes under a new name."""
        accepted = accepted_options(self.reference_class)
        renames = {}
        for name in self.written:
            retired = RETIRED_OPTIONS.get(name)
            if (name not in accepted and retired is not None and retired.replacement in accepted
                    and retired.replacement not in self.written):
                renames[name] = retired.replacement
        return renames

    def differences(self, config) -> dict[str, tuple]:
        """``{option as written: (asked, running)}`` for every option whose running value is not what was asked.

        ``asked`` is the written value, or for an option not written TRL's value for the same arguments
        (its declared default where there is no reference or the option was pinned). ``running`` is the
        config's value, a :class:`Renamed` for an option TRL renamed, a :class:`NotApplied` for one nothing runs.
        """
        accepted = accepted_options(self.reference_class)
        renames = self.renamed()
        targets = set(renames.values())
        defaults = _declared_defaults(self.reference_class)
        differences = {}
        for name in sorted(accepted):
            if name in targets or not hasattr(config, name):
                continue
            running = getattr(config, name)
            if name in self.written:
                asked = self.written[name]
                trl_reads = _MISSING if self.reference is None or name in self.pinned else getattr(self.reference, name)
                if trl_reads is not _MISSING and same_value(trl_reads, running):
                    continue  # TRL reads the written value the same way (scale_rewards=True is "group")
            elif self.reference is None or name in self.pinned:
                asked = defaults.get(name)
            else:
                asked = getattr(self.reference, name)
            if not same_value(asked, running):
                differences[name] = (asked, running)
        for name, value in self.written.items():
            if name in renames:
                differences[name] = (value, Renamed(renames[name], getattr(config, renames[name], None)))
            elif name not in accepted:
                if hasattr(config, name):  # an option of Unsloth's own (vllm_sampling_params, unsloth_num_chunks)
                    if not same_value(value, getattr(config, name)):
                        differences[name] = (value, getattr(config, name))
                else:
                    differences[name] = (value, NotApplied(explain_option(self.reference_class, name)))
        return differences


def written_options(init, args, kwargs) -> dict:
    """``{name: value}`` of the arguments a config ``__init__`` (``init``, unbound) received."""
    positional = [p.name for p in list(inspect.signature(init).parameters.values())[1:]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {**dict(zip(positional, args)), **kwargs}


def build_requested_config(config, reference_class, written: dict) -> RequestedConfig:
    """The :class:`RequestedConfig` of ``config`` (Unsloth's, already built) for the ``written`` options.

    ``reference_class`` is TRL's config class (grpo-custom's plain fork). Never raises for a config TRL
    rejects: the reference then takes Unsloth's running values for the fewest options TRL needs (module doc);
    each build is one ``reference_class(...)`` call (~1-10 ms), a few dozen at most on that path.
    """
    accepted = accepted_options(reference_class)
    requested = {name: value for name, value in written.items() if name in accepted}
    for name, value in written.items():
        retired = RETIRED_OPTIONS.get(name)
        if name not in accepted and retired is not None and retired.replacement in accepted:
            requested.setdefault(retired.replacement, value)
    changed_written = {name for name, value in requested.items()
                       if hasattr(config, name) and not same_value(value, getattr(config, name))}
    defaults = _declared_defaults(reference_class)
    changed_defaults = {name for name in accepted - set(requested)
                        if hasattr(config, name) and name in defaults
                        and not same_value(defaults[name], getattr(config, name))}
    reference, error = _try_build(reference_class, requested)
    if reference is not None:
        return RequestedConfig(written, reference_class, reference, frozenset(), None)
    error, device_error = _option_level_error(reference_class, requested, error)

    def build(pins):
        return _try_build(reference_class, {**requested, **{name: getattr(config, name) for name in pins}})[0]

    # Unsloth's rewrites of what was written (the notebooks' batch of 1) usually suffice: one build
    pinned = changed_written
    reference = build(pinned) if pinned else None
    if reference is None:
        pinned = changed_written | changed_defaults
        reference = build(pinned)
    if reference is None:  # two derived values TRL refuses together (generation_batch_size, steps_per_generation)
        for name in sorted(pinned):
            reference = build(pinned - {name})
            if reference is not None:
                pinned = pinned - {name}
                break
    if reference is None:
        return RequestedConfig(written, reference_class, None, frozenset(changed_written | changed_defaults), error,
                               device_error)
    for name in sorted(pinned):  # keep only the pins TRL needs: the rest compare against TRL's own reading
        candidate = build(pinned - {name})
        if candidate is not None:
            pinned, reference = pinned - {name}, candidate
    return RequestedConfig(written, reference_class, reference, frozenset(pinned), error, device_error)


# Precision options that every host accepts: transformers refuses TRL's bf16 default on a CPU before TRL checks
# any GRPO option, which would hide the option-level refusal the report is about.
HOST_NEUTRAL = {"use_cpu": True, "bf16": False, "fp16": False}


def _option_level_error(reference_class, requested: dict, error: str) -> tuple[str | None, str | None]:
    """``(option-level error, device error)`` for options TRL refused with ``error``.

    The options are tried again with the precision options the user did not write set to ``HOST_NEUTRAL``: if TRL
    still refuses, that refusal is the option-level one and ``error`` (when different) the device one; if it
    accepts, only the device refused (``(error, error)``: nothing else to name).
    """
    neutral = {name: value for name, value in HOST_NEUTRAL.items() if name not in requested}
    if not neutral:
        return error, None
    _, option_error = _try_build(reference_class, {**requested, **neutral})
    if option_error is None:
        return error, error
    return option_error, (error if option_error != error else None)


def _try_build(reference_class, arguments: dict):
    """``(reference_class(**arguments), None)``, or ``(None, "Error: message")`` where TRL refuses them.

    The build is internal: what it prints and warns is swallowed (the user saw Unsloth's and TRL's messages once,
    when their own config was built), and Unsloth's CPU backend normalization is off for it
    (:func:`_without_unsloth_cpu_defaults`), so the reference is what TRL alone reads.
    """
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), _without_unsloth_cpu_defaults():
            warnings.simplefilter("ignore")
            return reference_class(**arguments), None
    except Exception as error:  # TRL refusing what Unsloth accepted must not stop the user's config
        return None, f"{type(error).__name__}: {error}"


# Unsloth's CPU backend (unsloth_zoo >= 2026.10.9, no GPU and no UNSLOTH_ALLOW_CPU) wraps every training
# arguments class's __post_init__ to call this module global (use_cpu=True, 8-bit optimizers -> AdamW, ...).
_UNSLOTH_CPU_TRAINER = "unsloth_zoo.cpu.trainer"
_UNSLOTH_CPU_NORMALIZE = "normalize_cpu_training_arguments"


@contextlib.contextmanager
def _without_unsloth_cpu_defaults():
    """While building the reference, Unsloth's CPU backend leaves TRL's values alone (else its ``optim``/``use_cpu``
    rewrite would sit in the reference too and never be reported). A no-op where that backend is not loaded."""
    module = sys.modules.get(_UNSLOTH_CPU_TRAINER)
    original = getattr(module, _UNSLOTH_CPU_NORMALIZE, None)
    if original is None:
        yield
        return
    setattr(module, _UNSLOTH_CPU_NORMALIZE, lambda args: args)
    try:
        yield
    finally:
        setattr(module, _UNSLOTH_CPU_NORMALIZE, original)


def _declared_defaults(config_class) -> dict:
    """``{option: default}`` as ``config_class`` declares them (before any ``__post_init__``)."""
    defaults = {}
    for f in dataclasses.fields(config_class):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults
