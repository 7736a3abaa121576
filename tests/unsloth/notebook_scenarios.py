"""The ``GRPOConfig`` options of Unsloth's official GRPO notebooks, trained by stock Unsloth and under ``patch_unsloth()``.

``python -m tests.unsloth.notebook_scenarios OUT.json`` (started by tests/unsloth/test_notebook_configs.py with
Unsloth's GPU code path on CPU). One interpreter pays Unsloth's import once: Unsloth rewrites stock TRL (what
``import unsloth`` does on a GPU) and trains every notebook's configuration with stock ``trl.GRPOConfig`` /
``trl.GRPOTrainer``; then ``grpo_custom.patch_unsloth()`` and the same configurations train with grpo-custom's
classes at their defaults. Writes per notebook: both sides' losses and gradient norms, the largest difference
between their trained weights, what changed in training, the running batch size and grpo-custom's report.

The option values are those the notebooks pass to ``GRPOConfig`` (repository ``unslothai/notebooks``, ``nb/``,
commit bdda2efc7ad5ae129ea63cd2065d23c391406283, 2026-08-18; they pin ``trl==0.22.2``); expressions such as
``max_seq_length - max_prompt_length`` are written as their values. Shrunk for a CPU, and only that:
``max_steps`` 2 (transformers saves a checkpoint at the final step whatever ``save_steps`` is, so every run
pickles its config into ``checkpoint-2/training_args.bin``, as a notebook's run does), ``max_completion_length`` 8,
``output_dir`` a temporary directory, the model a tiny random one of the notebook's architecture (Gemma 4 E2B:
the Gemma 3 text model, the nearest tiny one built here) with the notebook's LoRA rank, alpha and target
modules, no Unsloth model loader (4-bit / vLLM need a GPU: plain PEFT with Unsloth's ``for_training`` stand-ins).
vLLM does not run on a CPU, so ``use_vllm=True`` (Qwen2.5) and ``vllm_sampling_params`` (Qwen3) are left out.
``max_prompt_length`` stays as written: TRL 1.x has no such option and Unsloth drops it, which is what is tested.

The patch line placed late (``LATE_PATCH``): a notebook that builds its config with stock ``trl.GRPOConfig`` (and
binds ``trl.GRPOTrainer``) before ``patch_unsloth()``. Both the stock trainer and grpo-custom's trainer given such a
config must warn, train and save their checkpoint (the config pickles).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_GSM8K_STYLE = dict(learning_rate=5e-6, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.001, warmup_ratio=0.1,
                    lr_scheduler_type="cosine", logging_steps=1, per_device_train_batch_size=1,
                    gradient_accumulation_steps=1, max_grad_norm=0.1, report_to="none")

# notebook: (architecture, LoRA (r, alpha, target modules), GRPOConfig options as the notebook writes them)
NOTEBOOKS = {
    "Llama3.1_(8B)-GRPO": ("llama", (32, 32, ALL_PROJ), {
        **_GSM8K_STYLE, "optim": "paged_adamw_8bit", "num_generations": 6, "max_prompt_length": 256,
        "max_completion_length": 768, "max_steps": 250, "save_steps": 250}),
    "Qwen3_(4B)-GRPO": ("qwen3", (32, 64, ALL_PROJ), {
        "temperature": 1.0, "learning_rate": 5e-6, "weight_decay": 0.001, "warmup_ratio": 0.1,
        "lr_scheduler_type": "linear", "optim": "adamw_8bit", "logging_steps": 1, "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1, "num_generations": 4, "max_prompt_length": "longest prompt + 1",
        "max_completion_length": "2048 - max_prompt_length", "max_steps": 100, "save_steps": 100,
        "report_to": "none"}),
    "Gemma3_(1B)-GRPO": ("gemma3", (8, 8, ALL_PROJ), {
        **_GSM8K_STYLE, "optim": "adamw_torch_fused", "num_generations": 4, "max_prompt_length": 256,
        "max_completion_length": 768, "max_steps": 50, "save_steps": 50}),
    "Qwen2.5_(3B)-GRPO": ("qwen2", (64, 64, ALL_PROJ), {
        **_GSM8K_STYLE, "optim": "adamw_8bit", "num_generations": 8, "max_prompt_length": 256,
        "max_completion_length": 200, "max_steps": 250, "save_steps": 250}),
    "Advanced_Llama3_2_(3B)_GRPO_LoRA": ("llama", (64, 64, ALL_PROJ), {
        "learning_rate": 5e-6, "weight_decay": 0.001, "warmup_ratio": 0.1, "lr_scheduler_type": "cosine",
        "optim": "adamw_8bit", "logging_steps": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4,
        "num_generations": 4, "max_prompt_length": 288, "max_completion_length": 1760, "max_steps": 500,
        "save_steps": 250, "max_grad_norm": 1.0, "report_to": "none"}),
    "Gemma4_(E2B)_GRPO": ("gemma3", (32, 64, ALL_PROJ), {
        "temperature": 1.0, "top_p": 0.95, "top_k": 64, "learning_rate": 5e-5, "weight_decay": 0.001,
        "warmup_ratio": 0.1, "lr_scheduler_type": "linear", "optim": "adamw_8bit", "logging_steps": 1,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "num_generations": 2,
        "max_completion_length": "4096 - (longest prompt + 1)", "max_steps": 100, "save_steps": 100, "report_to": "none",
        "epsilon": 0.2, "epsilon_high": 0.28, "delta": 1.5, "loss_type": "bnpo", "mask_truncated_completions": True}),
}
CPU_SHRINK = {"max_steps": 2, "max_completion_length": 8}
LATE_PATCH = "Llama3.1_(8B)-GRPO"  # the notebook the late patch line is tried with
SYSTEM_PROMPT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"


def notebook_dataset(rows: int = 16):
    """Rows in the notebooks' format: a chat ``prompt`` (system + user) and an ``answer`` column."""
    from datasets import Dataset

    questions = [(f"What is {a} plus {b}?", str(a + b)) for a, b in zip(range(1, rows + 1), range(3, rows + 3))]
    return Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                          {"role": "user", "content": question}], "answer": answer}
                              for question, answer in questions])


def xml_format_reward(completions, **kwargs):
    """1.0 where the completion has the notebooks' <reasoning>...</reasoning><answer>...</answer> layout, else 0."""
    import re

    pattern = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.S)
    return [1.0 if pattern.search(_text(c)) else 0.0 for c in completions]


def answer_reward(completions, answer, **kwargs):
    """2.0 where the text between <answer> tags equals the row's ``answer`` column, else 0."""
    import re

    found = [re.search(r"<answer>\s*(.*?)\s*</answer>", _text(c), re.S) for c in completions]
    return [2.0 if m is not None and m.group(1) == a else 0.0 for m, a in zip(found, answer)]


def letter_reward(completions, **kwargs):
    """Fraction of ASCII letters: varies on a random model's output, so the groups have an advantage."""
    return [sum(ch.isascii() and ch.isalpha() for ch in _text(c)) / max(len(_text(c)), 1) for c in completions]


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def notebook_options(name: str, output_dir: str, dataset, tokenizer) -> dict:
    """The notebook's options with the CPU shrink applied (and the Qwen3 lengths computed as it computes them)."""
    options = dict(NOTEBOOKS[name][2])
    if options.get("max_prompt_length") == "longest prompt + 1":
        longest = max(len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True))
                      for row in dataset)
        options["max_prompt_length"] = longest + 1
    options.update(CPU_SHRINK, output_dir=output_dir)
    return options


def _model(model_dir: str, lora: tuple):
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing.tiny_model import load_tiny_model

    torch.manual_seed(0)
    model, tokenizer = load_tiny_model(model_dir)
    rank, alpha, targets = lora
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))
    model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
    model.for_inference = lambda *args, **kwargs: None
    return model, tokenizer


def _train(trainer_class, config_class, name: str, model_dir: str, work: str, side: str, args=None) -> dict:
    """Train ``name``'s configuration (``args``, or one built with ``config_class``); record the run, any warning
    grpo-custom gave while building and training, and the checkpoint files written."""
    import warnings

    from tests.helpers import changed_parameters, snapshot

    model, tokenizer = _model(model_dir, NOTEBOOKS[name][1])
    dataset = notebook_dataset()
    before = snapshot(model)
    if args is None:
        args = config_class(**notebook_options(name, os.path.join(work, side, name), dataset, tokenizer))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = trainer_class(model=model, processing_class=tokenizer, args=args, train_dataset=dataset,
                                reward_funcs=[xml_format_reward, answer_reward, letter_reward])
        trainer.train()
    trainable, frozen = changed_parameters(model, before)
    log = trainer.state.log_history
    result = {"losses": [h["loss"] for h in log if "loss" in h], "grad_norms": [h["grad_norm"] for h in log if "grad_norm" in h],
              "trainable_changed": len(trainable), "frozen_changed": len(frozen), "global_step": trainer.state.global_step,
              "batch_size": args.per_device_train_batch_size, "reward_std": [h.get("reward_std") for h in log if "loss" in h],
              "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
              "grpo_custom_warnings": [str(w.message) for w in caught if str(w.message).startswith("grpo-custom:")],
              "checkpoint_files": sorted(os.listdir(os.path.join(args.output_dir, "checkpoint-2")))
              if os.path.isdir(os.path.join(args.output_dir, "checkpoint-2")) else []}
    if hasattr(trainer, "effective_config"):
        result["differences"] = {k: [repr(a), repr(b)] for k, (a, b) in trainer.effective_config()["differences"].items()}
    return result


def run(out: str) -> None:
    import torch

    torch.set_num_threads(1)
    import unsloth  # noqa: F401
    from unsloth.models.rl import _patch_trl_rl_trainers

    _patch_trl_rl_trainers("grpo_trainer")  # what `import unsloth` does at import time on a GPU
    import trl

    from grpo_custom.testing.tiny_model import save_tiny_model

    results = {}
    with tempfile.TemporaryDirectory() as work:
        models = {arch: str(save_tiny_model(os.path.join(work, arch), architecture=arch))
                  for arch in sorted({spec[0] for spec in NOTEBOOKS.values()})}
        stock = {name: _train(trl.GRPOTrainer, trl.GRPOConfig, name, models[spec[0]], work, "stock")
                 for name, spec in NOTEBOOKS.items()}
        stock_trainer, stock_config = trl.GRPOTrainer, trl.GRPOConfig  # bound above the patch line
        results["unsloth_config_fields"] = sorted(field.name for field in dataclasses.fields(stock_config))
        late_dataset = notebook_dataset()
        late_configs = [stock_config(**notebook_options(LATE_PATCH, os.path.join(work, side, LATE_PATCH),
                                                        late_dataset, None)) for side in ("late_stock", "late_ours")]
        import grpo_custom

        grpo_custom.patch_unsloth()
        late = {"stock_trainer": _train(stock_trainer, None, LATE_PATCH, models[NOTEBOOKS[LATE_PATCH][0]], work,
                                        "late_stock", args=late_configs[0]),
                "grpo_custom_trainer": _train(grpo_custom.GRPOTrainer, None, LATE_PATCH,
                                              models[NOTEBOOKS[LATE_PATCH][0]], work, "late_ours", args=late_configs[1])}
        results["late_patch"] = {side: {k: v for k, v in run.items() if k not in ("weights", "differences")}
                                 for side, run in late.items()}
        for name, spec in NOTEBOOKS.items():
            patched = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, name, models[spec[0]], work, "patched")
            stock_weights, patched_weights = stock[name].pop("weights"), patched.pop("weights")
            patched["max_weight_difference"] = max(float((stock_weights[n] - patched_weights[n]).abs().max())
                                                   for n in stock_weights)
            results[name] = {"stock": stock[name], "patched": patched}
        results["cwd_entries"] = sorted(os.listdir("."))
    with open(out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    run(sys.argv[1])
