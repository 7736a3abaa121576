"""Options that older GRPO scripts pass and the installed TRL / transformers no longer take: what replaces each.

A script written for trl 0.2x (Unsloth's GRPO notebooks pin ``trl==0.22.2``) passes ``warmup_ratio`` and
``max_prompt_length``; on TRL 1.x / transformers 5 a config class built by ``@dataclass`` answers with a bare
``unexpected keyword argument``. Whether an option exists is asked from the installed config class (its
dataclass fields) and the installed versions are read from the packages' metadata; only where a retired name
went cannot be derived from what is installed, so :data:`RETIRED_OPTIONS` holds just that (from TRL's
deprecation notices and transformers' v5 migration guide). A name that is neither an option nor in the table
gets the closest option names (``difflib``, above :data:`SUGGESTION_CUTOFF`), which catches typos; an option only
Unsloth's config has (:data:`UNSLOTH_OPTIONS`) is named as Unsloth's.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class RetiredOption:
    """One option a newer TRL / transformers dropped.

    Attributes:
        owner: the distribution whose config dropped it (``"trl"`` or ``"transformers"``).
        replacement: the option that now takes the same value, or ``None`` where nothing does.
        advice: what to do instead, in a sentence.
    """

    owner: str
    replacement: str | None
    advice: str


RETIRED_OPTIONS: dict[str, RetiredOption] = {
    "warmup_ratio": RetiredOption(
        "transformers", "warmup_steps",
        "warmup_steps takes the ratio itself: a value below 1 is a fraction of the training steps "
        "(warmup_ratio=0.1 becomes warmup_steps=0.1)"),
    "max_prompt_length": RetiredOption(
        "trl", None,
        "TRL no longer truncates prompts: filter or shorten overlong prompts in the dataset before training"),
    "use_liger_loss": RetiredOption("trl", "use_liger_kernel", "the same switch under its new name"),
    "vllm_guided_decoding_regex": RetiredOption("trl", "vllm_structured_outputs_regex",
                                                "the same regex under its new name"),
    "wandb_log_unique_prompts": RetiredOption("trl", "log_unique_prompts", "the same switch under its new name"),
    "per_gpu_train_batch_size": RetiredOption("transformers", "per_device_train_batch_size",
                                              "the same batch size under its new name"),
    "no_cuda": RetiredOption("transformers", "use_cpu", "use_cpu=True trains on the CPU"),
    "evaluation_strategy": RetiredOption("transformers", "eval_strategy", "the same strategy under its new name"),
}


# Options only Unsloth's GRPOConfig has (its UnslothGRPOConfig fields, unsloth 2026.10.7-2026.10.9), which TRL's
# class, and so grpo-custom's plain one, never took: named as Unsloth's, not "did you mean" a TRL option.
UNSLOTH_OPTIONS: dict[str, str] = {
    "vllm_sampling_params": "vLLM SamplingParams for Unsloth's vLLM generation",
    "unsloth_num_chunks": "chunking of Unsloth's fast GRPO loss",
    "unsloth_logit_chunk_multiplier": "chunking of Unsloth's logit computation",
    "unsloth_grpo_mini_batch": "mini batch of Unsloth's hidden state accumulation",
    "context_parallel_size": "Unsloth's context parallelism",
    "context_parallel_backend": "Unsloth's context parallelism",
}
# difflib similarity (0..1) a name must reach to be suggested: typos (learnig_rate, num_generation) pass,
# unrelated names sharing a prefix (vllm_sampling_params vs vllm_importance_sampling_cap, 0.63) do not.
SUGGESTION_CUTOFF = 0.75


def accepted_options(config_class) -> set[str]:
    """The keyword arguments ``config_class`` (a dataclass config) takes: its ``init`` fields."""
    return {field.name for field in dataclasses.fields(config_class) if field.init}


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (e.g. ``"trl"``), or ``"not installed"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def explain_option(config_class, name: str) -> str:
    """One line on why ``name`` is not an option of ``config_class`` and what to write instead.

    A retired option whose replacement the installed class takes names the replacement and the advice;
    any other name gets the closest option names of ``config_class``.
    """
    accepted = accepted_options(config_class)
    retired = RETIRED_OPTIONS.get(name)
    if retired is not None and (retired.replacement is None or retired.replacement in accepted):
        where = f"the installed {retired.owner} ({installed_version(retired.owner)}) removed it"
        instead = f"; use {retired.replacement} instead" if retired.replacement else ""
        return f"{name!r}: {where}{instead}: {retired.advice}."
    if name in UNSLOTH_OPTIONS and name not in accepted:
        return (f"{name!r}: an option of Unsloth's own GRPOConfig ({UNSLOTH_OPTIONS[name]}), not of TRL's "
                f"{config_class.__name__}: it is accepted under grpo_custom.patch_unsloth() (docs/unsloth.md); "
                "without Unsloth, leave it out.")
    close = difflib.get_close_matches(name, sorted(accepted), n=3, cutoff=SUGGESTION_CUTOFF)
    if close:
        return f"{name!r}: not an option of {config_class.__name__}; did you mean {' or '.join(repr(c) for c in close)}?"
    retired = difflib.get_close_matches(name, sorted(RETIRED_OPTIONS), n=1, cutoff=SUGGESTION_CUTOFF)
    if retired:
        return f"{name!r}: not an option of {config_class.__name__}; did you mean {explain_option(config_class, retired[0])}"
    return f"{name!r}: not an option of {config_class.__name__}."


def unknown_options_error(config_class, names) -> TypeError:
    """The ``TypeError`` for keyword arguments ``config_class`` does not take, one line per name (see
    :func:`explain_option`); a ``TypeError`` like Python's own ``unexpected keyword argument``."""
    lines = "\n".join(f"  {explain_option(config_class, name)}" for name in names)
    return TypeError(f"{config_class.__name__}.__init__() got unexpected keyword argument(s):\n{lines}")


def name_retired_options(config_class) -> None:
    """Make ``config_class.__init__`` (a dataclass's generated one) raise :func:`unknown_options_error` for
    keyword arguments it does not take, instead of Python's bare ``unexpected keyword argument``.

    ``inspect.signature`` of the wrapped ``__init__`` still shows the dataclass fields (``__wrapped__``), which
    is what Unsloth reads to build its own config on top of this one.
    """
    import functools

    dataclass_init = config_class.__init__
    accepted = accepted_options(config_class)

    @functools.wraps(dataclass_init)
    def __init__(self, *args, **kwargs):
        unknown = [name for name in kwargs if name not in accepted]
        if unknown:
            raise unknown_options_error(config_class, unknown)
        dataclass_init(self, *args, **kwargs)

    config_class.__init__ = __init__
