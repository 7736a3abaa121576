"""One GRPO run through Unsloth, stock or grpo-custom's fork, timed step by step (used by step_compare / e2e_step).

    python benchmarks/gpu_check/grpo_run.py --variant stock|fork --model-dir DIR --result PATH [--smoke] [options]

The same TRL script runs in both variants; only the first lines differ:

- ``stock``: ``import unsloth`` (which rewrites TRL's GRPOTrainer into ``UnslothGRPOTrainer``);
- ``fork``:  ``grpo_custom.patch_unsloth()`` (Unsloth compiles grpo-custom's fork instead).

Then ``from trl import GRPOConfig, GRPOTrainer``; the model comes from
``FastLanguageModel.from_pretrained(DIR, load_in_4bit=False)`` plus ``FastLanguageModel.get_peft_model``
(LoRA on every projection), and ``--warmup + --timed`` steps train on fixed prompts with two text rewards,
same seed. Per step it records: wall time (CUDA synchronized at both ends), time and tokens of generation
(``_generate_single_turn``), time of ``_generate_and_score_completions`` (generation, rewards, reference
and old log-probs), the rest (the policy update: forward, loss, backward, optimizer), the token count of
the update batch, and peak CUDA memory over the timed steps. The result file is rewritten after every step.

``--smoke`` (CPU): Unsloth's GPU code path with ``UNSLOTH_ALLOW_CPU=1``; the model is loaded with
transformers + PEFT (``FastLanguageModel.from_pretrained`` needs a GPU) and given the two methods
Unsloth-loaded models have; TRL's Triton-only log-prob kernel is replaced by grpo-custom's torch one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from gpu_check_common import (ResultFile, bitsandbytes_native, configure_environment, import_first,
                              letter_fraction_reward, prompts, space_count_reward, synchronize)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("stock", "fork"), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--result", default=None)
    parser.add_argument("--work-dir", default=None, help="output_dir and caches (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=5)
    parser.add_argument("--generations", type=int, default=8, help="num_generations (G)")
    parser.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size (completions)")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=96, help="prompt length (one token per byte)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fork-options", default="{}", help="JSON of grpo-custom GRPOConfig options (fork only)")
    return parser.parse_args(argv)


def import_variant(variant: str, smoke: bool):
    """The variant's first lines; returns the patch handle (fork) or None."""
    if variant == "fork":
        import grpo_custom

        return grpo_custom.patch_unsloth()
    import unsloth  # noqa: F401  (on a GPU this rewrites TRL's trainer)

    if smoke:  # with the CPU spoof PatchFastRL returns early: run the rewrite it would run (GUIDE §2)
        from unsloth.models.rl import _patch_trl_rl_trainers

        _patch_trl_rl_trainers("grpo_trainer")
    return None


def load_model(options, torch):
    max_seq_length = options.prompt_chars + options.completion_length + 64
    if not options.smoke:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=options.model_dir, max_seq_length=max_seq_length, load_in_4bit=False, dtype=torch.bfloat16,
            fast_inference=False)
        model = FastLanguageModel.get_peft_model(
            model, r=options.lora_r, lora_alpha=options.lora_r, lora_dropout=0.0, bias="none",
            target_modules=LORA_TARGETS, use_gradient_checkpointing="unsloth", random_state=options.seed)
        return model, tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(options.model_dir)
    model = AutoModelForCausalLM.from_pretrained(options.model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=options.lora_r, lora_alpha=options.lora_r, lora_dropout=0.0,
                                             target_modules=LORA_TARGETS))
    model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
    model.for_inference = lambda *args, **kwargs: None
    return model, tokenizer


class StepTimer:
    """Per-step wall time and the split into generation / scoring / update (see the module doc)."""

    def __init__(self, result: ResultFile, warmup: int, torch):
        self.result, self.warmup, self.torch = result, warmup, torch
        self.cuda = torch.cuda.is_available()
        self.steps: list[dict] = []
        self.current: dict = {}
        self.step_start = 0.0

    def wrap(self, trainer) -> list[str]:
        wrapped = []
        for name, key in (("_generate_single_turn", "generate"), ("_generate_and_score_completions", "generate_and_score")):
            original = getattr(trainer, name, None)
            if original is None:
                continue
            setattr(trainer, name, self._timed(original, key))
            wrapped.append(name)
        return wrapped

    def _timed(self, function, key):
        def timed(*args, **kwargs):
            synchronize()
            start = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize()
            self.current[f"{key}_s"] = self.current.get(f"{key}_s", 0.0) + time.perf_counter() - start
            if key == "generate" and isinstance(out, tuple) and out and isinstance(out[0], list):
                self.current["generated_tokens"] = self.current.get("generated_tokens", 0) + sum(len(ids) for ids in out[0])
                self.current["generated_sequences"] = self.current.get("generated_sequences", 0) + len(out[0])
            if key == "generate_and_score" and isinstance(out, dict):
                prompt_ids, completion_ids = out.get("prompt_ids"), out.get("completion_ids")
                if prompt_ids is not None and completion_ids is not None:
                    self.current["update_batch"] = [int(completion_ids.shape[0]),
                                                    int(prompt_ids.shape[1]), int(completion_ids.shape[1])]
                    self.current["update_tokens"] = int(completion_ids.shape[0]) * (
                        int(prompt_ids.shape[1]) + int(completion_ids.shape[1]))
                mask = out.get("completion_mask")
                if mask is not None:
                    self.current["completion_tokens_unmasked"] = int(mask.sum())
            return out

        return timed

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                synchronize()
                if timer.cuda and state.global_step == timer.warmup:
                    timer.result.set("peak_mib_warmup_and_load", round(timer.torch.cuda.max_memory_allocated() / 2**20, 1))
                    timer.torch.cuda.reset_peak_memory_stats()
                timer.current = {}
                timer.step_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                synchronize()
                step = dict(timer.current, step=state.global_step, step_s=time.perf_counter() - timer.step_start)
                step["update_s"] = step["step_s"] - step.get("generate_and_score_s", 0.0)
                if "generate_s" in step and "generate_and_score_s" in step:
                    step["score_s"] = step["generate_and_score_s"] - step["generate_s"]
                timer.steps.append({k: round(v, 5) if isinstance(v, float) else v for k, v in step.items()})
                timer.publish()

        return Timer()

    def publish(self) -> None:
        timed = self.steps[self.warmup:]
        figures = {"steps": self.steps, "steps_done": len(self.steps), "timed_steps_done": len(timed)}
        if timed:
            figures["median_step_s"] = statistics.median(s["step_s"] for s in timed)
            figures["median_update_s"] = statistics.median(s["update_s"] for s in timed)
            if all("generate_s" in s and s.get("generated_tokens") for s in timed):
                figures["generation_tokens_per_s"] = (sum(s["generated_tokens"] for s in timed)
                                                      / sum(s["generate_s"] for s in timed))
            if self.cuda:
                figures["peak_mib_timed"] = round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
                figures["peak_reserved_mib_timed"] = round(self.torch.cuda.max_memory_reserved() / 2**20, 1)
        self.result.update(figures)


def main(argv=None) -> int:
    options = parse(argv)
    if not (Path(options.model_dir) / "config.json").exists():  # the models part failed: fail fast
        print(f"no model in {options.model_dir} (did the models part run?)", file=sys.stderr)
        return 1
    work = Path(options.work_dir or __import__("tempfile").mkdtemp(prefix=f"grpo_run_{options.variant}_"))
    configure_environment(options.smoke, work)
    result = ResultFile(options.result)
    result.update({"variant": options.variant, "smoke": options.smoke,
                   "settings": {k: v for k, v in vars(options).items() if k not in ("result", "work_dir")}})
    started = time.perf_counter()
    import torch

    patch = import_variant(options.variant, options.smoke)
    from trl import GRPOConfig, GRPOTrainer

    result.update({"import_s": round(time.perf_counter() - started, 2), "trainer_class": GRPOTrainer.__name__,
                   "trainer_module": GRPOTrainer.__module__, "fork_patched": patch is not None})
    with contextlib.ExitStack() as stack:
        if options.smoke:
            cpu_logprob = import_first("grpo_custom.testing.cpu_logprob", "grpo_custom.cpu_logprob")
            stack.enter_context(cpu_logprob.use_torch_logprob_kernel())
        started = time.perf_counter()
        model, tokenizer = load_model(options, torch)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        result.update({"load_s": round(time.perf_counter() - started, 2), "model_class": type(model).__name__,
                       "base_parameters": total - trainable, "trainable_parameters": trainable,
                       "device": str(next(model.parameters()).device)})

        from datasets import Dataset

        steps = options.warmup + options.timed
        prompts_needed = max(steps * options.batch // options.generations, 1) + 2
        dataset = Dataset.from_list([{"prompt": p} for p in prompts(prompts_needed, options.prompt_chars)])
        kwargs = dict(output_dir=str(work / "out"), per_device_train_batch_size=options.batch,
                      gradient_accumulation_steps=1, num_generations=options.generations,
                      max_completion_length=options.completion_length, max_steps=steps, learning_rate=5e-6,
                      logging_steps=1, report_to="none", save_strategy="no", seed=options.seed,
                      data_seed=options.seed, disable_tqdm=True, dataloader_num_workers=0, temperature=1.0)
        if options.smoke:
            kwargs.update(bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, learning_rate=5e-2)
        else:
            kwargs.update(bf16=True)
            usable, detail = bitsandbytes_native()
            result.set("bitsandbytes_native", detail)
            if not usable:  # Unsloth's default optimizer is bitsandbytes' 8-bit AdamW
                kwargs.update(optim="adamw_torch")
                result.note(f"bitsandbytes unusable ({detail}): optim='adamw_torch' instead of Unsloth's adamw_8bit")
        if options.variant == "fork":
            kwargs.update(json.loads(options.fork_options))
        args = GRPOConfig(**kwargs)
        timer = StepTimer(result, options.warmup, torch)
        torch.manual_seed(options.seed)
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=dataset,
                              reward_funcs=[letter_fraction_reward, space_count_reward], callbacks=[timer.callback()])
        result.update({"trainer_instance_class": type(trainer).__name__, "wrapped": timer.wrap(trainer),
                       "optim": str(getattr(trainer.args, "optim", None)),
                       "loss_type": getattr(trainer.args, "loss_type", None), "beta": getattr(trainer.args, "beta", None)})
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        result.set("train_s", round(time.perf_counter() - started, 2))
        logged = [h for h in trainer.state.log_history if "loss" in h]
        result.update({"losses": [h["loss"] for h in logged],
                       "grad_norms": [h.get("grad_norm") for h in logged],
                       "rewards": [h.get("reward") for h in logged]})
    if patch is not None:
        patch.revert()
    print(json.dumps({k: v for k, v in result.figures.items() if k != "steps"}, default=repr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
