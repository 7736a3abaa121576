"""``patch_unsloth()``: make Unsloth compile its ``UnslothGRPOTrainer`` from grpo-custom's fork.

Unsloth rewrites whatever module sits at ``trl.trainer.grpo_trainer`` (GUIDE §3): reading the
trainer class's source, replacing ``compute_loss`` by its chunked fast loss and editing anchored
lines. The patch puts the fork module there (and TRL's pristine ``GRPOConfig`` back into
``trl.trainer.grpo_config``), runs Unsloth's rewrite, checks that every grpo-custom hook and
Unsloth's fast loss are in the result, and installs grpo-custom's terms into the fast loss. It
works whether ``unsloth`` was imported before or after ``grpo_custom``; nothing happens at
import time. The call is idempotent; the returned handle's ``revert()`` (or leaving its ``with``
block) restores every binding it changed, i.e. stock Unsloth (or stock TRL if Unsloth had not
rewritten it yet).
"""
from __future__ import annotations

import copyreg
import inspect
import sys
from dataclasses import dataclass, field

from grpo_custom.fork.versions import ALLOW_UNTESTED_ENV, UnsupportedVersionError, check_unsloth_versions  # noqa: F401

GENERATED_MODULE = "UnslothGRPOTrainer"
# Left in __init__ by Unsloth's rewrite of TRL's PEFT set-up (unsloth 2026.10.7-2026.10.9); its absence means the rewrite missed.
UNSLOTH_PEFT_MARKER = "PEFT initialization logic removed via script"
# grpo_accumulated_loss imports this at call time; the patched unsloth_zoo binding is what it then gets.
UNSLOTH_ENTROPY_IMPORT = "chunked_hidden_states_selective_log_softmax_recompute as _entropy_log_softmax"
_MISSING = object()
_active: "UnslothPatch | None" = None


class UnslothPatchError(RuntimeError):
    """Unsloth's rewrite of the fork failed, or a grpo-custom hook / Unsloth anchor did not land."""


def check_versions() -> None:
    """Stop unless trl, unsloth and unsloth_zoo form a set of the support matrix (:mod:`grpo_custom.fork.versions`).

    ``GRPO_CUSTOM_ALLOW_UNTESTED_VERSIONS=1`` turns the error into a warning.
    """
    try:
        check_unsloth_versions()
    except UnsupportedVersionError as error:
        raise UnslothPatchError(str(error)) from None


@dataclass
class _SavedBindings:
    """Attribute and sys.modules bindings as they were before patching, restorable in one call."""

    attributes: list = field(default_factory=list)
    modules: dict = field(default_factory=dict)
    dispatch: dict = field(default_factory=dict)

    def keep_attribute(self, owner, name: str) -> None:
        self.attributes.append((owner, name, getattr(owner, name, _MISSING)))

    def keep_module(self, name: str) -> None:
        self.modules[name] = sys.modules.get(name, _MISSING)

    def keep_dispatch(self, klass) -> None:
        self.dispatch[klass] = copyreg.dispatch_table.get(klass, _MISSING)

    def restore(self) -> None:
        for owner, name, value in reversed(self.attributes):
            if value is _MISSING:
                if hasattr(owner, name):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)
        for name, module in self.modules.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for klass, reducer in self.dispatch.items():
            if reducer is _MISSING:
                copyreg.dispatch_table.pop(klass, None)
            else:
                copyreg.dispatch_table[klass] = reducer


class UnslothPatch:
    """The active patch: Unsloth's compiled fork classes, and ``revert()`` to undo everything."""

    def __init__(self, trainer_class, config_class, module, saved: _SavedBindings, restore_fork):
        self.trainer_class = trainer_class
        self.config_class = config_class
        self.module = module
        self._saved = saved
        self._restore_fork = restore_fork
        self.active = True

    def revert(self) -> None:
        """Restore every binding the patch changed (stock Unsloth, or stock TRL)."""
        global _active
        if not self.active:
            return
        from grpo_custom.unsloth.loss_terms import remove_loss_terms

        remove_loss_terms(self.module)
        self._saved.restore()
        self._restore_fork()
        self.active = False
        if _active is self:
            _active = None

    def __enter__(self) -> "UnslothPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.revert()

    def __repr__(self) -> str:
        state = "active" if self.active else "reverted"
        return f"<UnslothPatch {state}: {self.trainer_class.__module__}.{self.trainer_class.__name__}>"


def active_patch() -> UnslothPatch | None:
    """The active patch, or None."""
    return _active


def patch_status() -> str:
    """One line for ``grpo-custom doctor``."""
    if _active is None:
        return "not active (call grpo_custom.patch_unsloth())"
    return (f"active: {_active.trainer_class.__name__} compiled from the fork ({inspect.getfile(_active.module)}); "
            "regularizer terms inside Unsloth's chunked loss; entropies from the kernel each config's entropy_kernel picks")


def expected_hook_calls() -> list[str]:
    """The ``grpo_custom_hooks.<name>(`` calls the fork's edits insert (each must survive Unsloth)."""
    import re

    from grpo_custom.patches import GRPO_TRAINER_EDITS

    calls = []
    for edit in GRPO_TRAINER_EDITS:
        calls += re.findall(r"grpo_custom_hooks\.(\w+)\(", edit.replacement)
    return sorted(set(calls))


def verify_generated(module) -> None:
    """Raise :class:`UnslothPatchError` unless the generated module holds our hooks and Unsloth's fast loss."""
    source = inspect.getsource(module)
    missing = [name for name in expected_hook_calls() if f"grpo_custom_hooks.{name}(" not in source]
    if missing:
        raise UnslothPatchError(
            f"Unsloth's rewrite dropped grpo-custom hook(s) {missing} from {inspect.getfile(module)}; "
            "the fork would not be active."
        )
    trainer_class = getattr(module, f"Unsloth{'GRPOTrainer'}", None)
    if trainer_class is None:
        raise UnslothPatchError(f"{inspect.getfile(module)} has no UnslothGRPOTrainer class.")
    compute_loss = inspect.getsource(trainer_class.compute_loss)
    if "grpo_accumulated_loss(" not in compute_loss:
        raise UnslothPatchError(
            "Unsloth's fast loss anchor 'grpo_accumulated_loss(' is missing from the generated compute_loss: "
            "the fork would train without Unsloth's chunked loss."
        )
    if UNSLOTH_PEFT_MARKER not in source:
        raise UnslothPatchError(
            f"Unsloth's PEFT set-up rewrite ({UNSLOTH_PEFT_MARKER!r}) did not land in the generated __init__: "
            "an edit of the fork changed the block Unsloth anchors on."
        )
    for name in ("grpo_compute_loss", "UnslothEfficientGRPO", "grpo_accumulated_loss"):
        if not hasattr(module, name):
            raise UnslothPatchError(f"The generated module lacks Unsloth's {name}; cannot install grpo-custom's loss terms.")
    accumulated_loss = getattr(module.grpo_accumulated_loss, "grpo_custom_original", module.grpo_accumulated_loss)
    if UNSLOTH_ENTROPY_IMPORT not in inspect.getsource(accumulated_loss):
        raise UnslothPatchError(
            f"The generated grpo_accumulated_loss no longer imports its entropy log-softmax as {UNSLOTH_ENTROPY_IMPORT!r} "
            "from unsloth_zoo.rl_replacements at call time: grpo-custom's one-pass entropy kernel could not apply."
        )


def _make_config_honest(trainer_class, unsloth_config_class, plain_config_class) -> None:
    """Unsloth's config remembers what TRL semantics give for the same arguments; the trainer can report it."""
    import functools

    from grpo_custom.fork.effective_config import effective_config
    from grpo_custom.unsloth.honest_config import check_fast_path_config, record_requested_config

    original_init = unsloth_config_class.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        record_requested_config(self, plain_config_class, original_init, args, kwargs)

    unsloth_config_class.__init__ = __init__
    trainer_class.effective_config = effective_config
    trainer_class.grpo_custom_fast_path_check = staticmethod(check_fast_path_config)


def keep_displaced_configs_picklable(saved: _SavedBindings, displaced, config_class) -> None:
    """Instances of config classes the patch displaced still pickle (``Trainer._save`` runs ``torch.save(args)``).

    Pickle stores a class by ``__module__`` + ``__qualname__`` and refuses an instance whose class is no longer
    the object bound there: a config built before ``patch_unsloth()`` (stock Unsloth's ``UnslothGRPOConfig``,
    which poses as ``trl.trainer.grpo_config.GRPOConfig``, or TRL's own class) failed with ``PicklingError: ...
    it's not the same object as trl.trainer.grpo_config.GRPOConfig`` at the first checkpoint. Each displaced class
    gets a ``copyreg`` reducer (restored by ``revert()``) that stores its instances as ``config_class`` (the
    patched config, which pickles under its own importable name), its options as they were plus
    ``config_class``'s declared defaults for options the displaced class lacks, so the file loads complete.
    """
    import dataclasses

    defaults = {f.name: f for f in dataclasses.fields(config_class) if f.init}

    def reduce_displaced(config):
        getstate = getattr(config, "__getstate__", None)
        state = dict((getstate() if getstate is not None else None) or config.__dict__)
        for name, spec in defaults.items():
            if name not in state:
                if spec.default is not dataclasses.MISSING:
                    state[name] = spec.default
                elif spec.default_factory is not dataclasses.MISSING:
                    state[name] = spec.default_factory()
        return (copyreg._reconstructor, (config_class, object, None), state)

    for klass in displaced:
        if isinstance(klass, type) and klass is not config_class and not issubclass(klass, config_class):
            if klass not in saved.dispatch:
                saved.keep_dispatch(klass)
            copyreg.dispatch_table[klass] = reduce_displaced


def warn_on_displaced_trainers(saved: _SavedBindings, displaced, trainer_class) -> None:
    """While the patch is active, building a trainer class it displaced (bound before the patch, e.g. by
    ``from trl import GRPOTrainer`` above the ``patch_unsloth()`` line) warns that the run is not grpo-custom's."""
    import functools
    import warnings

    wrapped = [klass for klass in displaced
               if isinstance(klass, type) and klass is not trainer_class and klass not in trainer_class.__mro__]
    for klass in wrapped:
        saved.keep_attribute(klass, "__init__")
        original_init = klass.__init__

        def make_init(original_init, klass):
            @functools.wraps(original_init)
            def __init__(self, *args, **kwargs):
                outermost = next(c for c in type(self).__mro__ if c in wrapped)  # one warning per trainer
                if outermost is klass and not isinstance(self, trainer_class) and _active is not None:
                    warnings.warn(NOT_GRPO_CUSTOM_TRAINER.format(built=_qualified(type(self)),
                                                                 ours=_qualified(trainer_class)), stacklevel=2)
                original_init(self, *args, **kwargs)
            return __init__

        klass.__init__ = make_init(original_init, klass)


NOT_GRPO_CUSTOM_TRAINER = (
    "grpo-custom: a trainer class bound before grpo_custom.patch_unsloth() ({built}, stock: not compiled from "
    "grpo-custom's fork) is being built while the patch is active; grpo-custom's trainer is the {ours} compiled from "
    "its fork (patch_unsloth().trainer_class). This run trains on stock Unsloth/TRL, without grpo-custom. Put "
    "`grpo_custom.patch_unsloth()` before `from trl import GRPOConfig, GRPOTrainer` (right after `import unsloth`), "
    "or import GRPOTrainer and GRPOConfig again after it."
)


def _qualified(klass) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"


def use_compile_location(saved: _SavedBindings) -> None:
    """Compile the fork into ``UNSLOTH_COMPILE_LOCATION`` as it is set now.

    ``unsloth_zoo.compiler`` (read in 2026.10.9) takes the variable once, when it is first imported (by
    ``import unsloth``), into its module global ``UNSLOTH_COMPILE_LOCATION``; a variable set after that (a
    notebook that imports Unsloth first, as Unsloth asks, then sets it) left the generated
    ``UnslothGRPOTrainer.py`` in ``./unsloth_compiled_cache``. Where the variable is set and differs from that global, the global is
    rebound for the patch (``revert()`` restores it). Unset, Unsloth's own choice stands.
    """
    import os

    location = os.environ.get("UNSLOTH_COMPILE_LOCATION")
    if not location:
        return
    import unsloth_zoo.compiler as compiler

    if getattr(compiler, "UNSLOTH_COMPILE_LOCATION", None) != location:
        saved.keep_attribute(compiler, "UNSLOTH_COMPILE_LOCATION")
        compiler.UNSLOTH_COMPILE_LOCATION = location


CPU_SPOOF_HINT = ("set UNSLOTH_ALLOW_CPU=1 to run Unsloth's GPU code path on a CPU (tests only), with "
                  "UNSLOTH_COMPILE_DISABLE=1 and TORCHDYNAMO_DISABLE=1 to skip torch.compile, before the first "
                  "import of unsloth")


def _import_unsloth() -> None:
    """``import unsloth``; where Unsloth finds no accelerator, an :class:`UnslothPatchError` naming what helps."""
    try:
        import unsloth  # noqa: F401
    except NotImplementedError as error:  # unsloth_zoo.device_type: "cannot find any torch accelerator"
        raise UnslothPatchError(
            f"Unsloth cannot run here: {error} patch_unsloth() needs a CUDA GPU (or another accelerator Unsloth "
            f"supports). Without one, train with grpo-custom's plain fork (skip patch_unsloth()), or {CPU_SPOOF_HINT}."
        ) from error


def patch_unsloth() -> UnslothPatch:
    """Compile Unsloth's ``UnslothGRPOTrainer`` from grpo-custom's fork (idempotent; see module doc)."""
    global _active
    if _active is not None:
        return _active
    check_versions()
    _import_unsloth()  # Unsloth's own import-time patching runs first
    import trl
    import trl.trainer
    import trl.trainer.grpo_config as trl_grpo_config
    import trl.trainer.grpo_trainer  # noqa: F401

    from grpo_custom.fork import config as grpo_custom_config
    from grpo_custom.fork.config import pristine_trl_grpo_config
    from grpo_custom.fork.generate import FORK_MODULE_NAME, load_fork
    from grpo_custom.unsloth.loss_terms import install_loss_terms

    fork = load_fork()
    plain_trainer, plain_config = fork.GRPOTrainer, fork.GRPOConfig
    pristine = pristine_trl_grpo_config()

    saved = _SavedBindings()
    for owner in (trl, trl.trainer):
        saved.keep_attribute(owner, "GRPOTrainer")
        saved.keep_attribute(owner, "GRPOConfig")
    saved.keep_attribute(trl.trainer, "grpo_trainer")
    saved.keep_attribute(trl_grpo_config, "GRPOConfig")
    saved.keep_attribute(grpo_custom_config, "GRPOConfig")
    stock_module = sys.modules["trl.trainer.grpo_trainer"]
    if stock_module is not fork:
        saved.keep_attribute(stock_module, "GRPOTrainer")
        saved.keep_attribute(stock_module, "GRPOConfig")
    for klass in (pristine, plain_config):
        saved.keep_dispatch(klass)
        for attribute in ("__module__", "__qualname__", "__name__"):
            saved.keep_attribute(klass, attribute)
    saved.keep_module("trl.trainer.grpo_trainer")
    saved.keep_module(GENERATED_MODULE)
    owners = (trl, trl.trainer, trl_grpo_config, stock_module)
    displaced_configs = {getattr(owner, "GRPOConfig", None) for owner in owners} | {pristine}
    displaced_trainers = {getattr(owner, "GRPOTrainer", None) for owner in owners} - {plain_trainer}

    def restore_fork() -> None:
        fork.GRPOTrainer, fork.GRPOConfig = plain_trainer, plain_config

    trl_grpo_config.GRPOConfig = pristine
    use_compile_location(saved)
    sys.modules["trl.trainer.grpo_trainer"] = fork
    trl.trainer.grpo_trainer = fork
    try:
        from unsloth.models.rl import _patch_trl_rl_trainers_impl

        _patch_trl_rl_trainers_impl("grpo_trainer")
        trainer_class = fork.GRPOTrainer
        if trainer_class is plain_trainer or not trainer_class.__name__.startswith("Unsloth"):
            raise UnslothPatchError(
                f"Unsloth did not rewrite {FORK_MODULE_NAME}.GRPOTrainer (it is still {trainer_class!r}); "
                "set UNSLOTH_ENABLE_LOGGING=1 to see why."
            )
        module = sys.modules[trainer_class.__module__]
        verify_generated(module)
        install_loss_terms(module)
        _make_config_honest(trainer_class, fork.GRPOConfig, plain_config)
        keep_displaced_configs_picklable(saved, displaced_configs - {fork.GRPOConfig}, fork.GRPOConfig)
        warn_on_displaced_trainers(saved, displaced_trainers, trainer_class)
    except BaseException as error:
        module = sys.modules.get(getattr(fork.GRPOTrainer, "__module__", ""), None)
        if module is not None and module is not fork and hasattr(module, "grpo_compute_loss"):
            from grpo_custom.unsloth.loss_terms import remove_loss_terms

            remove_loss_terms(module)
        saved.restore()
        restore_fork()
        if isinstance(error, UnslothPatchError):
            raise
        raise UnslothPatchError(f"Unsloth's rewrite of grpo-custom's fork failed: {type(error).__name__}: {error}") from error
    _active = UnslothPatch(trainer_class, fork.GRPOConfig, module, saved, restore_fork)
    return _active
