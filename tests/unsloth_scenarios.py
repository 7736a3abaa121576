"""Scenarios run in a fresh process with Unsloth's GPU code path on CPU (GUIDE §2).

``python -m tests.unsloth_scenarios NAME OUT.json``; tests/unsloth/test_unsloth_fast_path.py starts them
and asserts on the JSON each writes. Unsloth patches process-wide state at import, and the import
order is part of what is tested, so every scenario gets its own interpreter.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


def _tiny(model_dir, seed=0):
    from tests.helpers import lora_model

    model, tokenizer = lora_model(model_dir, seed=seed)
    model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
    model.for_inference = lambda *args, **kwargs: None
    return model, tokenizer


def _train(trainer_class, config_class, model_dir, output_dir, steps=2, reward_funcs=None, callbacks=None,
           float32_loss=False, **overrides):
    from grpo_custom.testing.length_task import length_dataset
    from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, snapshot

    model, tokenizer = _tiny(model_dir)
    before = snapshot(model)
    args = config_class(**cpu_training_kwargs(output_dir, max_steps=steps, **overrides))
    trainer = trainer_class(model=model, reward_funcs=reward_funcs or [letter_fraction_reward], args=args,
                            train_dataset=length_dataset(16), processing_class=tokenizer, callbacks=callbacks)
    if float32_loss:  # Unsloth's loss without its 16-bit autocast (what it does for a float32 model on a GPU)
        import torch

        trainer._autocast_enabled, trainer._autocast_dtype = False, torch.float16
    trainer.train()
    trainable, frozen = changed_parameters(model, before)
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return trainer, sorted(trainable), sorted(frozen), weights


def _relative_error(got, want) -> float:
    """max |got − want| / max |want| (a float)."""
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def _generated_diff(stock_text: str, fork_text: str) -> dict:
    import difflib

    stock_lines = stock_text.replace("grpo_custom_fork", "grpo_trainer").splitlines()
    fork_lines = fork_text.replace("grpo_custom_fork", "grpo_trainer").splitlines()
    added, removed = [], []
    for line in difflib.unified_diff(stock_lines, fork_lines, lineterm="", n=0):
        if line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
        elif line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
    return {"added": added, "removed": removed}


def _hooks_in(module) -> dict:
    import inspect

    from grpo_custom.unsloth.patch import expected_hook_calls

    source = inspect.getsource(module)
    return {name: f"grpo_custom_hooks.{name}(" in source for name in expected_hook_calls()}


@scenario
def unsloth_first(model_dir, work):
    """import unsloth (and its rewrite of stock TRL, as on a GPU) → patch_unsloth → train → revert."""
    import inspect

    import unsloth  # noqa: F401
    from unsloth.models.rl import _patch_trl_rl_trainers

    _patch_trl_rl_trainers("grpo_trainer")  # what `import unsloth` does at import time on a GPU
    import trl
    import unsloth_zoo.rl_replacements as zoo

    stock_trainer, stock_config = trl.GRPOTrainer, trl.GRPOConfig
    stock_text = open(inspect.getfile(sys.modules[stock_trainer.__module__])).read()
    stock_module_binding = sys.modules["trl.trainer.grpo_trainer"]
    zoo_function_names = ("grpo_entropy_bonus_weights", "UnslothGRPOEntropyBonus",
                          "chunked_hidden_states_selective_log_softmax_recompute")
    zoo_functions = [getattr(zoo, name) for name in zoo_function_names]

    import grpo_custom

    patch = grpo_custom.patch_unsloth()
    module = patch.module
    fork_text = open(inspect.getfile(module)).read()
    from trl import GRPOConfig as TRLConfig, GRPOTrainer as TRLTrainer

    result = {
        "zoo_functions_wrapped": [getattr(zoo, name) is not original
                                  for name, original in zip(zoo_function_names, zoo_functions)],
        "trl_names_are_fork": TRLTrainer is patch.trainer_class and TRLConfig is patch.config_class,
        "grpo_custom_names_are_fork": grpo_custom.GRPOTrainer is patch.trainer_class
        and grpo_custom.GRPOConfig is patch.config_class,
        "idempotent": grpo_custom.patch_unsloth() is patch,
        "hooks": _hooks_in(module),
        "diff": _generated_diff(stock_text, fork_text),
        "trainer_class": patch.trainer_class.__name__,
    }
    stock, _, _, stock_weights = _train(stock_trainer, stock_config, model_dir, os.path.join(work, "stock"), steps=3)
    fork, trainable, frozen, fork_weights = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir,
                                                   os.path.join(work, "fork"), steps=3, check_rewards="off")
    result["stock_losses"] = [h["loss"] for h in stock.state.log_history if "loss" in h]
    result["fork_losses"] = [h["loss"] for h in fork.state.log_history if "loss" in h]
    result["stock_grad_norms"] = [h["grad_norm"] for h in stock.state.log_history if "grad_norm" in h]
    result["fork_grad_norms"] = [h["grad_norm"] for h in fork.state.log_history if "grad_norm" in h]
    result["weights_equal"] = all(bool((stock_weights[n] == fork_weights[n]).all()) for n in stock_weights)
    result["fork_trainable_changed"], result["fork_frozen_changed"] = len(trainable), len(frozen)
    result["fork_logged_advantages"] = any("advantages/mean" in h for h in fork.state.log_history)

    patch.revert()
    result["revert"] = {
        "trl_trainer_is_stock_unsloth": trl.GRPOTrainer is stock_trainer,
        "trl_config_is_stock_unsloth": trl.GRPOConfig is stock_config,
        "module_binding_restored": sys.modules["trl.trainer.grpo_trainer"] is stock_module_binding,
        "zoo_restored": [getattr(zoo, name) for name in zoo_function_names] == zoo_functions,
        "no_active_patch": grpo_custom.unsloth.patch.active_patch() is None,
        "grpo_custom_name_is_plain_fork": grpo_custom.GRPOTrainer.__module__ == "trl.trainer.grpo_custom_fork",
    }
    again = grpo_custom.patch_unsloth()
    result["repatch_after_revert"] = again is not patch and again.trainer_class is trl.GRPOTrainer
    again.revert()
    return result


@scenario
def grpo_custom_first(model_dir, work):
    """import grpo_custom → patch_unsloth (imports Unsloth itself) → names → revert to stock TRL."""
    import grpo_custom

    assert "unsloth" not in sys.modules
    import trl

    original = trl.GRPOTrainer
    with grpo_custom.patch_unsloth() as patch:
        from trl import GRPOTrainer
        from trl.trainer.grpo_trainer import GRPOTrainer as module_level

        result = {
            "unsloth_imported": "unsloth" in sys.modules,
            "trl_name_is_fork": GRPOTrainer is patch.trainer_class and module_level is patch.trainer_class,
            "grpo_custom_name_is_fork": grpo_custom.GRPOTrainer is patch.trainer_class,
            "hooks": _hooks_in(patch.module),
            "doctor_active": "active: UnslothGRPOTrainer" in grpo_custom.unsloth.patch.patch_status(),
        }
        _, trainable, frozen, _ = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir,
                                         os.path.join(work, "fork"), check_rewards="off")
        result["trainable_changed"], result["frozen_changed"] = len(trainable), len(frozen)
    result["reverted_to_stock_trl"] = trl.GRPOTrainer is original
    return result


@scenario
def broken(model_dir, work):
    """A fork Unsloth cannot give its fast loss, a dropped hook, a wrong version: clear errors, nothing left patched."""
    import warnings

    import grpo_custom
    import grpo_custom.unsloth.patch as unsloth_patch
    import trl
    from grpo_custom.fork.source_edit import SourceEdit

    original = trl.GRPOTrainer
    result = {}

    def attempt_patch(case: str) -> None:
        """Try patching; record the error and that neither TRL nor the active patch changed."""
        try:
            grpo_custom.patch_unsloth()
        except unsloth_patch.UnslothPatchError as error:
            result[f"{case}_error"] = str(error)
        result[f"after_{case}"] = {"trl_untouched": trl.GRPOTrainer is original,
                                   "no_active_patch": unsloth_patch.active_patch() is None}

    # Every check below must fail loudly: the override variable (CI or a user may have it set) is cleared first
    os.environ.pop(unsloth_patch.ALLOW_UNTESTED_ENV, None)
    import grpo_custom.fork.versions as versions

    real_check = unsloth_patch.check_unsloth_versions
    future = {name: versions.installed_version(name) for name in versions.PACKAGES}
    result["installed"] = dict(future)
    future["unsloth"] = "2099.1.1"
    unsloth_patch.check_unsloth_versions = lambda: real_check(future)
    try:
        grpo_custom.patch_unsloth()
    except unsloth_patch.UnslothPatchError as error:
        result["version_error"] = str(error)
    os.environ[unsloth_patch.ALLOW_UNTESTED_ENV] = "1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unsloth_patch.check_versions()
    result["version_override_warned"] = any("untested versions" in str(w.message) for w in caught)
    del os.environ[unsloth_patch.ALLOW_UNTESTED_ENV]
    unsloth_patch.check_unsloth_versions = real_check

    # An edit that makes Unsloth keep TRL's compute_loss (its opt-out token): the fast loss would be lost.
    import grpo_custom.patches as patches

    opt_out = SourceEdit.insert_after(
        "opt_out_of_fast_loss", "test only", "        return self._compute_loss(model, inputs)\n",
        "        _unsloth_trl_compute_loss = True\n",
    )
    original_edits = patches.GRPO_TRAINER_EDITS
    patches.GRPO_TRAINER_EDITS = original_edits + (opt_out,)
    attempt_patch("lost_fast_loss")
    patches.GRPO_TRAINER_EDITS = original_edits
    from grpo_custom.fork.generate import FORK_MODULE_NAME

    del sys.modules[FORK_MODULE_NAME]  # the next patch attempt generates the fork without the test-only edit

    real_expected = unsloth_patch.expected_hook_calls
    unsloth_patch.expected_hook_calls = lambda: real_expected() + ["hook_that_does_not_exist"]
    attempt_patch("dropped_hook")
    unsloth_patch.expected_hook_calls = real_expected

    # An Unsloth whose loss no longer imports its entropy log-softmax where grpo-custom rebinds it
    real_import = unsloth_patch.UNSLOTH_ENTROPY_IMPORT
    unsloth_patch.UNSLOTH_ENTROPY_IMPORT = "entropy_log_softmax_of_a_future_unsloth as _entropy_log_softmax"
    attempt_patch("moved_entropy_import")
    unsloth_patch.UNSLOTH_ENTROPY_IMPORT = real_import

    return result


@scenario
def train_registry(model_dir, work):
    """Every estimator and regularizer through Unsloth's compiled fast loss, with a reward schedule."""
    import grpo_custom
    from tests.helpers import letter_fraction_reward

    def length_bonus(prompts, completions, **kwargs):
        return [len(c) / 20.0 for c in completions]

    schedule = grpo_custom.RewardSchedule([
        grpo_custom.Stage(start=0, weights={"letter_fraction_reward": 1.0, "length_bonus": 0.0}, name="letters"),
        grpo_custom.Stage(start=1, weights={"letter_fraction_reward": 0.5, "length_bonus": 0.5}, name="mixed"),
    ])
    runs = {}
    with grpo_custom.patch_unsloth():
        cases = [("estimator", name, {"advantage_estimator": name,
                                      "advantage_estimator_kwargs": {"gamma": 0.9} if name == "reinforce_pp" else None,
                                      **({"value_function": {"kind": "head"}} if name == "gae" else {})})
                 for name in grpo_custom.list_advantage_estimators()]
        regularizer_configs = {
            "kl": {"name": "kl", "kind": "k2", "coef": grpo_custom.Schedule.linear(0.05, 0.1, 0, 2)},
            "entropy": {"name": "entropy", "coef": 0.01},
            "length": {"name": "length", "target": 6, "coef": 0.1},
            "lora_l2": {"name": "lora_l2", "coef": 1e-3},
        }
        for name in grpo_custom.list_regularizers():
            cases.append(("regularizer", name, {"regularizers": [regularizer_configs[name]]}))
        cases.append(("regularizer", "kl_reward", {"regularizers": [{"name": "kl", "placement": "reward", "coef": 0.05}]}))
        for kind, name, overrides in cases:
            trainer, trainable, frozen, _ = _train(
                grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir, os.path.join(work, name), steps=2,
                reward_funcs=[letter_fraction_reward, length_bonus], reward_schedule=schedule, check_rewards="off",
                **overrides,
            )
            logged = [h for h in trainer.state.log_history if "loss" in h]
            runs[name] = {
                "kind": kind,
                "trainable_changed": len(trainable),
                "frozen_changed": len(frozen),
                "metric_keys": sorted({k for h in logged for k in h if k.startswith(("regularizers/", "schedule/"))}),
                "schedule_weights": [h.get("schedule/weight/length_bonus") for h in logged],
                "finite_losses": all(h["loss"] == h["loss"] for h in logged),
                "kl_coef": [h.get("regularizers/kl/coef") for h in logged],
            }
        runs["recompiles"] = _compiled_graphs_per_step(model_dir, os.path.join(work, "recompile"), schedule)
    return runs


@scenario
def compile_loss(model_dir, work):
    """Unsloth's chunk loss compiled for real (graphs > 0), and a scheduled coefficient that moves every step."""
    import torch._dynamo.utils as dynamo_utils

    import grpo_custom

    with grpo_custom.patch_unsloth():
        result = _compiled_graphs_per_step(model_dir, os.path.join(work, "recompile"), None)
    result["graph_names"] = sorted({str(name) for name in dynamo_utils.counters["stats"]})
    return result


def _compiled_graphs_per_step(model_dir, output_dir, schedule) -> dict:
    """Dynamo's compiled-graph count after each step of a run whose KL coefficient changes every step."""
    import torch._dynamo.utils as dynamo_utils
    from transformers import TrainerCallback

    import grpo_custom
    from grpo_custom.testing.length_task import length_dataset
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward

    counts = []

    class CountGraphs(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            counts.append(int(dynamo_utils.counters["stats"]["unique_graphs"]))

    model, tokenizer = _tiny(model_dir)
    coef = grpo_custom.Schedule.linear(0.01, 0.2, 0, 5)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(output_dir, max_steps=5, check_rewards="off",
                                                        regularizers=[{"name": "kl", "kind": "k3", "coef": coef}]))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                      train_dataset=length_dataset(16), processing_class=tokenizer,
                                      callbacks=[CountGraphs()])
    trainer.train()
    coefs = [h.get("regularizers/kl/coef") for h in trainer.state.log_history if "loss" in h]
    return {"graphs_after_each_step": counts, "coefs": coefs}


@scenario
def gradients(model_dir, work):
    """Each loss-placed regularizer's gradient inside Unsloth's chunked loss equals a full-logits reference."""
    import torch

    import grpo_custom
    from grpo_custom.algorithms.regularizers import RegularizerInputs, RegularizerSpec
    from grpo_custom.unsloth.decisions import token_weights
    from grpo_custom.unsloth.loss_terms import TERMS_KEY

    torch.manual_seed(0)
    B, T, H, V = 3, 5, 8, 17
    results = {}
    with grpo_custom.patch_unsloth() as patch:
        module = patch.module
        import unsloth_zoo.rl_replacements as zoo

        compute_loss = module.grpo_compute_loss.grpo_custom_original

        def token_weights_like_unsloth(mask, kwargs):
            return token_weights(compute_loss, ids, mask, kwargs)

        ids = torch.randint(0, V, (B, T))
        mask = torch.ones(B, T)
        mask[0, 3:] = 0
        mask[2, 4:] = 0
        advantages = torch.randn(B)
        lm_head = torch.randn(V, H, dtype=torch.float32)

        def fresh_hidden():
            torch.manual_seed(1)
            return torch.randn(B, T, H, requires_grad=True)

        with torch.no_grad():
            base = torch.log_softmax(fresh_hidden() @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        old = base + 0.05 * torch.randn(B, T)
        ref = base + 0.3 * torch.randn(B, T)

        for loss_type in ("dapo", "grpo", "bnpo", "dr_grpo"):
            # num_items_in_batch counts the whole accumulation window (2 micro-batches), as TRL passes it
            kwargs = {"loss_type": loss_type, "max_completion_length": T, "num_items_in_batch": 2 * mask.sum(),
                      "current_gradient_accumulation_steps": 2, "num_processes": 1, "steps_per_generation": 2,
                      "epsilon_low": 0.2, "epsilon_high": 0.2}

            def fast_grad(terms):
                hidden = fresh_hidden()
                logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, 2)
                loss = module.UnslothEfficientGRPO.apply(logps, old, ref, None, lm_head, ids, mask, advantages, 0.0,
                                                         None, 1, {**kwargs, TERMS_KEY: terms}, None)[0]
                loss.backward()
                return hidden.grad

            without = fast_grad([])
            for config in ({"name": "kl", "kind": "k1"}, {"name": "kl", "kind": "k2"}, {"name": "kl", "kind": "k3"},
                           {"name": "kl", "kind": "low_var_kl"}, {"name": "kl", "kind": "abs"},
                           {"name": "kl", "kind": "k3", "grad_kind": "k2"}):
                spec = RegularizerSpec.from_config({**config, "coef": 0.7})
                delta = fast_grad([(spec, torch.tensor(0.7))]) - without
                hidden = fresh_hidden()
                logits = hidden @ lm_head.t()  # [B, T, V] full logits: the slow reference
                logps = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                keep = mask.bool()
                inputs = RegularizerInputs(logps=torch.where(keep, logps, 0.0), ref_logps=torch.where(keep, ref, 0.0),
                                           mask=mask)
                term = spec.term(inputs)
                weights = token_weights_like_unsloth(mask, kwargs)
                (0.7 * (term * weights).sum()).backward()
                key = f"{loss_type}/kl_{config['kind']}" + (f"_grad_{config['grad_kind']}" if "grad_kind" in config else "")
                results[key] = _relative_error(delta, hidden.grad)

            # Independent of how the weights are obtained: the k3 regularizer's gradient equals that of Unsloth's own
            # beta·k3 term (no clamp active here), which Unsloth aggregates itself
            def unsloth_beta_grad(beta):
                hidden = fresh_hidden()
                logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, 2)
                module.UnslothEfficientGRPO.apply(logps, old, ref, None, lm_head, ids, mask, advantages, beta, None, 1,
                                                  {**kwargs, TERMS_KEY: []}, None)[0].backward()
                return hidden.grad

            spec = RegularizerSpec.from_config({"name": "kl", "kind": "k3", "coef": 0.7})
            ours = fast_grad([(spec, torch.tensor(0.7))]) - without
            results[f"{loss_type}/kl_k3_vs_unsloth_beta"] = _relative_error(ours, unsloth_beta_grad(0.7) - without)

            # TRL's use_bias_correction_kl: the KL term times π/π_old, with the ratio's gradient too
            spec = RegularizerSpec.from_config({"name": "kl", "kind": "k3", "coef": 0.7})
            corrected = {**kwargs, "use_bias_correction_kl": True}
            hidden = fresh_hidden()
            logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, 2)
            module.UnslothEfficientGRPO.apply(logps, old, ref, None, lm_head, ids, mask, advantages, 0.0, None, 1,
                                              {**corrected, TERMS_KEY: []}, None)[0].backward()
            plain = hidden.grad
            hidden = fresh_hidden()
            logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, 2)
            module.UnslothEfficientGRPO.apply(logps, old, ref, None, lm_head, ids, mask, advantages, 0.0, None, 1,
                                              {**corrected, TERMS_KEY: [(spec, torch.tensor(0.7))]}, None)[0].backward()
            delta = hidden.grad - plain
            hidden = fresh_hidden()
            logps = torch.log_softmax(hidden @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            keep = mask.bool()
            masked_logps, masked_old = torch.where(keep, logps, 0.0), torch.where(keep, old, 0.0)
            inputs = RegularizerInputs(logps=masked_logps, ref_logps=torch.where(keep, ref, 0.0), mask=mask,
                                       importance_ratio=torch.exp(masked_logps - masked_old))
            (0.7 * (spec.term(inputs) * token_weights_like_unsloth(mask, corrected)).sum()).backward()
            results[f"{loss_type}/kl_k3_bias_corrected"] = _relative_error(delta, hidden.grad)

            # Unsloth's non-chunked fallback gets the same terms (taken from the trainer in the loss context)
            from types import SimpleNamespace

            from grpo_custom.unsloth.loss_terms import _loss_trainer

            spec = RegularizerSpec.from_config({"name": "kl", "kind": "k2", "coef": 0.7})
            fake_trainer = SimpleNamespace(state=SimpleNamespace(global_step=0),
                                           grpo_custom=SimpleNamespace(placed=lambda placement: [spec]))

            def slow_grad(trainer):
                hidden = fresh_hidden()
                logps = torch.log_softmax(hidden @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                token = _loss_trainer.set(trainer)
                try:
                    module.grpo_compute_loss_slow(ref, logps, old, None, ids, mask, 0.0, advantages, **kwargs)[0].backward()
                finally:
                    _loss_trainer.reset(token)
                return hidden.grad

            delta = slow_grad(fake_trainer) - slow_grad(None)
            hidden = fresh_hidden()
            logps = torch.log_softmax(hidden @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            keep = mask.bool()
            inputs = RegularizerInputs(logps=torch.where(keep, logps, 0.0), ref_logps=torch.where(keep, ref, 0.0),
                                       mask=mask)
            (0.7 * (spec.term(inputs) * token_weights_like_unsloth(mask, kwargs)).sum()).backward()
            results[f"{loss_type}/slow_path_kl_k2"] = _relative_error(delta, hidden.grad)

            # entropy, weighted like the loss type, with the log-probs' gradient too (the policy loss reads them):
            # outside a loss call (no plan) the patched binding runs Unsloth's recomputing kernel, inside one
            # grpo-custom's one-pass kernel
            from grpo_custom.unsloth.decisions import SmallBatchRule
            from grpo_custom.unsloth.entropy_plan import EntropyKernelPlan, _entropy_plan

            weights = token_weights_like_unsloth(mask, kwargs)
            grad_logps = torch.randn(B, T)
            hidden = fresh_hidden()
            log_probs = torch.log_softmax(hidden @ lm_head.t(), -1)  # [B, T, V]
            full_entropy = -(log_probs.exp() * log_probs).sum(-1)
            picked = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            ((picked * grad_logps).sum() + 0.3 * (-full_entropy * weights).sum()).backward()
            reference = hidden.grad
            plans = {"entropy": None, "entropy_one_pass": EntropyKernelPlan(mode="keep_log_probs", total_rows=B, multiplier=4,
                                                                 scorer_keeps_logits=True,
                                                                 small_batch=SmallBatchRule(0, 0))}
            for name, plan in plans.items():
                token = _entropy_plan.set(plan)
                try:
                    hidden = fresh_hidden()
                    logps, entropies = zoo.chunked_hidden_states_selective_log_softmax_recompute(
                        hidden, lm_head, ids, chunks=2, return_entropy=True)
                finally:
                    _entropy_plan.reset(token)
                bonus = zoo.UnslothGRPOEntropyBonus.apply(entropies, -0.3 * weights, 1.0)
                ((logps * grad_logps).sum() + bonus).backward()
                results[f"{loss_type}/{name}"] = _relative_error(hidden.grad, reference)
    return results


@scenario
def honest_config(model_dir, work):
    """Unsloth's silent config rewrites are reported; options its fast loss ignores raise."""
    import grpo_custom
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward

    result = {}
    with grpo_custom.patch_unsloth():
        from grpo_custom.testing.length_task import length_dataset

        model, tokenizer = _tiny(model_dir)
        args = grpo_custom.GRPOConfig(**cpu_training_kwargs(os.path.join(work, "a"), loss_type="dapo",
                                                            check_rewards="off"))
        trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                          train_dataset=length_dataset(16), processing_class=tokenizer)
        effective = trainer.effective_config()
        result["differences"] = {k: [repr(a), repr(b)] for k, (a, b) in effective["differences"].items()}
        result["trainer"] = {k: repr(v) for k, v in effective["trainer"].items()}
    return result


@scenario
def gpu_4bit(model_dir, work):
    """On a CUDA GPU: a 4-bit model through FastLanguageModel, patched, trained with grpo-custom's terms."""
    import torch

    import grpo_custom

    patch = grpo_custom.patch_unsloth()
    from unsloth import FastLanguageModel

    from grpo_custom.testing.length_task import length_dataset
    from grpo_custom.testing.tiny_model import save_tiny_model
    from tests.helpers import changed_parameters, letter_fraction_reward, snapshot

    llama_dir = str(save_tiny_model(os.path.join(work, "tiny_llama"), architecture="llama"))
    use_vllm = os.environ.get("GRPO_CUSTOM_TEST_VLLM") == "1"
    model, tokenizer = FastLanguageModel.from_pretrained(llama_dir, max_seq_length=256, load_in_4bit=True,
                                                         fast_inference=use_vllm)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"])
    before = snapshot(model)
    torch.cuda.reset_peak_memory_stats()
    args = grpo_custom.GRPOConfig(
        output_dir=os.path.join(work, "out"), per_device_train_batch_size=8, num_generations=8,
        max_completion_length=32, max_steps=3, learning_rate=1e-3, logging_steps=1, report_to="none",
        save_strategy="no", seed=0, check_rewards="off", advantage_estimator="rloo",
        regularizers=[{"name": "kl", "kind": "k2", "coef": 0.05}, {"name": "entropy", "coef": 0.001}],
    )
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                      train_dataset=length_dataset(32), processing_class=tokenizer)
    trainer.train()
    trainable, frozen = changed_parameters(model, before)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "device": torch.cuda.get_device_name(0),
        "trainable_changed": len(trainable),
        "frozen_changed": len(frozen),
        "metric_keys": sorted({k for h in logged for k in h if k.startswith("regularizers/")}),
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "trainer_class": type(trainer).__name__,
        "used_vllm": bool(getattr(trainer, "use_vllm", False)),
    }
    patch.revert()
    return result


@scenario
def gpu_value_adapter(model_dir, work):
    """On a CUDA GPU: the ``adapter`` critic kind on a 4-bit FastLanguageModel whose LoRA runs through Unsloth's
    fast LoRA kernels (every attention and MLP projection adapted, no dropout): the kernels must read the active
    adapter, so the critic's V differs from the same head on the policy adapter's hidden states."""
    import torch

    import grpo_custom

    patch = grpo_custom.patch_unsloth()
    from unsloth import FastLanguageModel

    from grpo_custom.testing.length_task import length_dataset
    from grpo_custom.testing.tiny_model import save_tiny_model
    from grpo_custom.value.rollout import critic_values, critic_weights
    from tests.helpers import letter_fraction_reward, snapshot

    llama_dir = str(save_tiny_model(os.path.join(work, "tiny_llama"), architecture="llama"))
    model, tokenizer = FastLanguageModel.from_pretrained(llama_dir, max_seq_length=256, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    before = snapshot(model)
    args = grpo_custom.GRPOConfig(
        output_dir=os.path.join(work, "out_value"), per_device_train_batch_size=8, num_generations=8,
        max_completion_length=32, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to="none",
        save_strategy="no", seed=0, check_rewards="off", advantage_estimator="gae",
        value_function={"kind": "adapter", "lr": 1e-2, "adapter_lr": 1e-3},
    )
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                      train_dataset=length_dataset(32), processing_class=tokenizer)
    trainer.train()
    critic = trainer.grpo_custom.critic
    params = dict(model.named_parameters())
    moved = {name for name, value in before.items() if not torch.equal(params[name].detach(), value)}
    prompt = tokenizer(["Write a word:"] * 2, return_tensors="pt").to(model.device)
    ids = torch.cat([prompt["input_ids"], prompt["input_ids"][:, -4:]], dim=1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        with critic_weights(trainer, critic):
            critic_v = critic_values(trainer, critic, ids, mask, 4)
        policy_v = critic_values(trainer, critic, ids, mask, 4)
    logged = [h for h in trainer.state.log_history if "value/loss" in h]
    result = {
        "trainer_class": type(trainer).__name__,
        "policy_lora_moved": sorted(n for n in moved if ".lora_" in n),
        "base_moved": sorted(n for n in moved if ".lora_" not in n),
        "policy_lora": sorted(n for n in before if ".lora_" in n),
        "critic_b_nonzero": [float(p.detach().abs().sum()) > 0 for n, p in critic.adapter_params.items()
                             if ".lora_B." in n],
        "critic_vs_policy_values": float((critic_v - policy_v).abs().max()),
        "value_losses": [h["value/loss"] for h in logged],
        "critic_updates": critic.optimizer.updates,
    }
    patch.revert()
    return result


@scenario
def entropy_kernels(model_dir, work):
    """Entropy terms in a patched trainer: which chunked kernel runs per ``entropy_kernel``, and equal gradients.

    Each case trains two steps from the same seed with an entropy regularizer, TRL's ``entropy_coef``
    and ``top_entropy_quantile`` (whose mask reads the entropies), and records the LoRA gradients
    before the first optimizer step and how often each kernel ran with ``return_entropy=True``.
    """
    import torch
    from transformers import TrainerCallback

    import grpo_custom
    from grpo_custom.unsloth import entropy_kernel
    from tests.helpers import letter_fraction_reward

    calls = {"one_pass": 0, "entropy_calls": 0, "rows": []}
    one_pass_apply = entropy_kernel.ChunkedLogProbsAndEntropy.apply

    def counting_one_pass(*args):
        calls["one_pass"] += 1
        return one_pass_apply(*args)

    class CaptureGradients(TrainerCallback):
        def __init__(self):
            self.gradients = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.gradients is None:
                self.gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                                  if p.requires_grad and p.grad is not None}

    cases = {
        "keep_log_probs": {"entropy_kernel": "keep_log_probs"},
        "recompute": {"entropy_kernel": "recompute"},
        "auto": {"entropy_kernel": "auto"},
        "keep_log_probs_float32": {"entropy_kernel": "keep_log_probs", "float32_loss": True},
        "recompute_float32": {"entropy_kernel": "recompute", "float32_loss": True},
        "auto_float32": {"entropy_kernel": "auto", "float32_loss": True},
    }
    entropy_options = {"regularizers": [{"name": "entropy", "coef": 0.05}], "entropy_coef": 0.02,
                       "top_entropy_quantile": 0.5}
    result = {}
    with grpo_custom.patch_unsloth():
        import unsloth_zoo.rl_replacements as zoo

        patched = zoo.chunked_hidden_states_selective_log_softmax_recompute

        from grpo_custom.unsloth.decisions import fused_linear_holds_all_rows
        from grpo_custom.unsloth.entropy_plan import head_matmul_dtype

        auto_inputs = {"float32_logits": [], "fused_holds_all_rows": []}  # what auto's rule reads, per entropy call

        def counting_entropy_calls(*args, **kwargs):
            if kwargs.get("return_entropy", False):
                calls["entropy_calls"] += 1
                calls["rows"].append(int(args[0].shape[0]))  # 1: the packed-sequence call
                hidden, head = args[0], args[1]
                auto_inputs["float32_logits"].append(head_matmul_dtype(head, False) == torch.float32)
                auto_inputs["fused_holds_all_rows"].append(fused_linear_holds_all_rows(
                    hidden.numel() // hidden.shape[-1], head.shape[1], head.shape[0], head.device))
            return patched(*args, **kwargs)

        zoo.chunked_hidden_states_selective_log_softmax_recompute = counting_entropy_calls
        entropy_kernel.ChunkedLogProbsAndEntropy.apply = counting_one_pass
        gradients = {}
        try:
            extra_cases = [("trl_entropy_coef_only", {"entropy_coef": 0.02}), ("no_entropy", {})]
            for name, overrides in [*cases.items(), *extra_cases]:
                options = overrides if name in dict(extra_cases) else {**entropy_options, **overrides}
                calls.update(one_pass=0, entropy_calls=0, rows=[])
                auto_inputs.update(float32_logits=[], fused_holds_all_rows=[])
                capture = CaptureGradients()
                trainer, trainable, frozen, _ = _train(
                    grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir, os.path.join(work, name), steps=2,
                    reward_funcs=[letter_fraction_reward], callbacks=[capture], check_rewards="off", **options)
                gradients[name] = capture.gradients
                logged = [h for h in trainer.state.log_history if "loss" in h]
                result[name] = {"calls": dict(calls), "trainable_changed": len(trainable),
                                "frozen_changed": len(frozen),
                                "entropy_metric": logged[0].get("regularizers/entropy/value"),
                                "loss": logged[0]["loss"],
                                "auto_inputs": {key: sorted(set(values)) for key, values in auto_inputs.items()}}
        finally:
            zoo.chunked_hidden_states_selective_log_softmax_recompute = patched
            entropy_kernel.ChunkedLogProbsAndEntropy.apply = one_pass_apply
    for name, reference_name in (("keep_log_probs", "recompute"), ("auto", "recompute"),
                                 ("keep_log_probs_float32", "recompute_float32"), ("auto_float32", "recompute_float32")):
        reference = gradients[reference_name]
        result[name]["gradient_relative_error"] = max(_relative_error(gradients[name][key], grad)
                                                      for key, grad in reference.items())
    import unsloth_zoo.rl_replacements as zoo
    from grpo_custom.unsloth.decisions import scorer_keeps_logits

    result["unsloth_scorer_keeps_logits"] = scorer_keeps_logits()
    reference = gradients["recompute"]
    # TRL's entropy_coef acts under Unsloth: its gradient differs from a run without entropy
    result["trl_entropy_coef_only"]["gradient_difference_vs_no_entropy"] = max(
        _relative_error(gradients["trl_entropy_coef_only"][key], grad) for key, grad in gradients["no_entropy"].items())
    result["gradient_tensors"] = len(reference)
    result["gradient_scale"] = max(float(grad.abs().max()) for grad in reference.values())
    return result


@scenario
def policy_losses(model_dir, work):
    """Every registered policy loss through Unsloth's fast loss; ppo_clip through the term equals stock Unsloth."""
    import grpo_custom

    runs = {}
    with grpo_custom.patch_unsloth():
        for name in grpo_custom.list_policy_losses():
            trainer, trainable, frozen, _ = _train(
                grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir, os.path.join(work, name), steps=2,
                check_rewards="off", policy_loss=name, loss_type="grpo", num_iterations=2,
                regularizers=[{"name": "kl", "kind": "k2", "coef": 0.05}])
            logged = [h for h in trainer.state.log_history if "loss" in h]
            runs[name] = {"trainable_changed": len(trainable), "frozen_changed": len(frozen),
                          "finite_losses": all(h["loss"] == h["loss"] for h in logged),
                          "metric_keys": sorted({k for h in logged for k in h if k.startswith("policy_loss/")}),
                          "regularizer_logged": all("regularizers/kl/value" in h for h in logged)}
        histories = {}
        for how, overrides in (("stock", {}), ("term", {"policy_loss": grpo_custom.get_policy_loss("ppo_clip")})):
            trainer, _, _, weights = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir,
                                            os.path.join(work, f"ppo_{how}"), steps=3, check_rewards="off", **overrides)
            histories[how] = {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                              "grad_norms": [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h],
                              "weights": weights}
        runs["ppo_clip_term_vs_stock"] = {
            "losses": [histories["term"]["losses"], histories["stock"]["losses"]],
            "grad_norms": [histories["term"]["grad_norms"], histories["stock"]["grad_norms"]],
            "weight_error": max(_relative_error(histories["term"]["weights"][key], value)
                                for key, value in histories["stock"]["weights"].items()),
        }
    return runs


@scenario
def policy_schedule(model_dir, work):
    """A scheduled epsilon and clip_ratio_c (dual_clip) inside the compiled fast loss: logged per step, no new graph."""
    import torch._dynamo.utils as dynamo_utils
    from transformers import TrainerCallback

    import grpo_custom

    with grpo_custom.patch_unsloth():
        counts = []

        class CountGraphs(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counts.append(int(dynamo_utils.counters["stats"]["unique_graphs"]))

        epsilon = grpo_custom.Schedule.linear(0.1, 0.3, 0, 5)
        bound = grpo_custom.Schedule.linear(2.0, 4.0, 0, 5)
        trainer, trainable, frozen, _ = _train(
            grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir, os.path.join(work, "scheduled"), steps=5,
            check_rewards="off", policy_loss="dual_clip", epsilon=epsilon,
            policy_loss_kwargs={"clip_ratio_c": bound}, callbacks=[CountGraphs()])
        logged = [h for h in trainer.state.log_history if "loss" in h]
        return {
            "steps": [h["step"] for h in logged],
            "epsilon_low": [h.get("policy_loss/epsilon_low") for h in logged],
            "clip_ratio_c": [h.get("policy_loss/clip_ratio_c") for h in logged],
            "want_epsilon": [epsilon(h["step"] - 1) for h in logged],
            "want_clip_ratio_c": [bound(h["step"] - 1) for h in logged],
            "graphs_after_each_step": counts,
            "trainable_changed": len(trainable), "frozen_changed": len(frozen),
        }


@scenario
def policy_gradients(model_dir, work):
    """Each policy loss's gradient inside Unsloth's fast loss equals a full-logits torch reference, per loss_type."""
    import torch

    import grpo_custom
    from grpo_custom.unsloth.decisions import chunked_token_weights
    from grpo_custom.unsloth.loss_terms import _unsloth_compute_loss
    from grpo_custom.algorithms.policy_losses import build_policy_loss_spec
    from grpo_custom.unsloth.policy_term import POLICY_KEY, PolicyStep, _policy_step

    torch.manual_seed(0)
    B, T, H, V = 4, 6, 8, 17
    results, effects = {}, {}
    with grpo_custom.patch_unsloth() as patch:
        module = patch.module
        ids = torch.randint(0, V, (B, T))
        mask = torch.ones(B, T)
        mask[0, 3:] = 0
        mask[2, 5:] = 0
        advantages = torch.randn(B) * 2
        lm_head = torch.randn(V, H)

        def fresh_hidden():
            torch.manual_seed(1)
            return torch.randn(B, T, H, requires_grad=True)

        with torch.no_grad():
            base = torch.log_softmax(fresh_hidden() @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        old = base + 0.2 * torch.randn(B, T)
        ref = base + 0.3 * torch.randn(B, T)
        for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
            kwargs = {"loss_type": loss_type, "max_completion_length": T, "num_items_in_batch": mask.sum(),
                      "current_gradient_accumulation_steps": 2, "num_processes": 1, "steps_per_generation": 2,
                      "epsilon_low": 0.2, "epsilon_high": 0.2}
            for name in grpo_custom.list_policy_losses():
                options = {"clip_cov_ratio": 0.2, "clip_cov_lb": 0.0, "generator": None} if name == "clip_cov" else (
                    {"kl_cov_ratio": 0.2} if name == "kl_cov" else {})
                spec = build_policy_loss_spec(name, {k: v for k, v in options.items() if k != "generator"},
                                              {"epsilon_low": 0.2, "epsilon_high": 0.28, "delta": None})
                torch.manual_seed(5)  # clip_cov's random pick: the same in both computations
                hidden = fresh_hidden()
                logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, 2)
                token = _policy_step.set(PolicyStep(spec=spec, step=0))
                try:
                    loss = module.UnslothEfficientGRPO.apply(logps, old, ref, None, lm_head, ids, mask, advantages,
                                                             0.04, None, 1, {**kwargs, POLICY_KEY: True}, None)[0]
                finally:
                    _policy_step.reset(token)
                loss.backward()
                fast = hidden.grad
                torch.manual_seed(5)
                hidden = fresh_hidden()
                logps = torch.log_softmax(hidden @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                keep = mask.bool()
                new, old_masked, ref_masked = (torch.where(keep, x, 0.0) for x in (logps, old, ref))
                per_token, _ = spec(new, old_masked, advantages.unsqueeze(1).expand(B, T), mask)
                log_ratio = torch.clamp(ref_masked - new, -20, 20)
                kl = torch.clamp(torch.expm1(log_ratio) - log_ratio, -10, 10)  # Unsloth's clamped k3
                # Unsloth's own aggregation weights, asked of the installed Unsloth (bnpo's normalization moved in
                # 2026.10.9): the reference's KL term is then Unsloth's own loss, weighted as Unsloth weights it.
                weights = chunked_token_weights(_unsloth_compute_loss(module), ids, mask, kwargs, 1)
                ((per_token + 0.04 * kl) * weights).sum().backward()
                results[f"{loss_type}/{name}"] = _relative_error(fast, hidden.grad)
                reference = hidden.grad
                hidden = fresh_hidden()
                logps = torch.log_softmax(hidden @ lm_head.t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                new = torch.where(keep, logps, 0.0)
                log_ratio = torch.clamp(ref_masked - new, -20, 20)
                kl = torch.clamp(torch.expm1(log_ratio) - log_ratio, -10, 10)
                (0.04 * kl * weights).sum().backward()
                effects[f"{loss_type}/{name}"] = _relative_error(hidden.grad, reference)  # the policy term's share
    return {"errors": results, "policy_effect": effects}


def _compile_unsloth_loss_for_real() -> None:
    """Turn Unsloth's loss compile back on under ``UNSLOTH_COMPILE_DISABLE=1``, which the runner keeps set so that
    Unsloth's model-side patches stay eager (decorated at import, when the variable is read).

    From unsloth_zoo 2026.10.9 ``torch_compile_with_fallback``, which compiles the chunk loss at each call, also
    returns the function uncompiled while its module's ``UNSLOTH_COMPILE_DISABLE`` is true; earlier releases
    compile the loss with ``torch.compile`` directly (no such flag to clear).
    """
    import unsloth  # noqa: F401  (imports unsloth_zoo with the environment above)
    import unsloth_zoo.temporary_patches.utils as zoo_utils

    if getattr(zoo_utils, "UNSLOTH_COMPILE_DISABLE", False):
        zoo_utils.UNSLOTH_COMPILE_DISABLE = False


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    import torch

    torch.set_num_threads(1)
    if os.environ.get("TORCHDYNAMO_DISABLE") != "1" and name != "grpo_custom_first":
        _compile_unsloth_loss_for_real()
    from grpo_custom.testing.tiny_model import save_tiny_model

    with tempfile.TemporaryDirectory() as work:
        model_dir = str(save_tiny_model(os.path.join(work, "tiny")))
        result = SCENARIOS[name](model_dir, work)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1, default=repr)


if __name__ == "__main__":
    main()
