"""Each sharding-sensitive piece under FSDP2 and DeepSpeed ZeRO-3, next to one unsharded process (the sharding
test's worker).

Run as ``torchrun --nproc_per_node 2 sharding_run.py OUT MODEL_DIR RM_DIR``. Every rank first computes the
single-process reference on an unsharded copy built from the same seed, then the same pieces on the model
sharded by ``fully_shard`` (2-rank CPU mesh, gloo) and by ``deepspeed.initialize`` (ZeRO-3, CPU accelerator),
and writes ``record-<rank>.json``. Pieces: the ``lora_l2`` spec and a user-registered parameter-space term
(value, and the parameters' gradients after the engine's reduction, with a forward loss next to them as in
training), the entropy kernel on a sharded output head, and a reward model loaded while a ZeRO-3 config is active.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
COEF = 0.1


def lora_model(model_dir: str):
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing.tiny_model import load_tiny_model

    torch.manual_seed(0)
    model, _ = load_tiny_model(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                        init_lora_weights=False)  # random A and B: a non-zero penalty and gradient
    return get_peft_model(model, config)


def parameter_inputs(model):
    from grpo_custom.algorithms.regularizers import RegularizerInputs

    return RegularizerInputs(logps=None, old_logps=None, ref_logps=None, mask=None, advantages=None,
                             entropies=None, model=model, completion_lengths=None)


def register_user_term():
    """A parameter-space term as a user would write it: Σ |W| over every trainable weight, read plainly."""
    from grpo_custom.algorithms.regularizers import register_regularizer

    @register_regularizer("user_abs_sum", placement="parameters")
    def user_abs_sum(inputs):
        weights = [p for p in inputs.model.parameters() if p.requires_grad]
        term = torch.stack([w.float().abs().sum() for w in weights]).sum()
        return term, {"value": term.detach()}


def forward_loss(model, ids):
    return model(input_ids=ids).logits.float().pow(2).mean()


def terms(model, specs):
    """(Σ COEF·term, {name: value}) over the specs, on ``model`` (its forward has run: as in training)."""
    total, values = 0.0, {}
    for spec in specs:
        term, metrics = spec.compute(parameter_inputs(model))
        total = total + COEF * term
        values[spec.name] = metrics["value"]
    return total, values


def kernel(head_weight, hidden, index):
    from grpo_custom.unsloth.entropy_kernel import chunked_logps_and_entropies

    logps, entropies = chunked_logps_and_entropies(hidden, head_weight, index, chunks=2)
    return logps, entropies, (logps.sum() + entropies.sum())


def main(out: str, model_dir: str, rm_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from grpo_custom.algorithms.regularizers import get_regularizer, parse_regularizers
    from grpo_custom.algorithms.sharding import gathered_parameters

    register_user_term()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    specs = parse_regularizers([{"name": "lora_l2"}, {"name": "user_abs_sum"}])
    ids = torch.arange(24).reshape(2, 12) + 40
    record = {}

    # One process, unsharded.
    model = lora_model(model_dir)
    loss = forward_loss(model, ids)
    total, record["single"] = terms(model, specs)
    (loss + total).backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(1)
    hidden = torch.randn(2, 5, 64, requires_grad=True)
    index = torch.randint(0, 200, (2, 5))
    head = torch.nn.Linear(64, 262, bias=False)
    logps, entropies, objective = kernel(head.weight, hidden, index)
    objective.backward()
    head_reference = (logps.detach(), entropies.detach(), head.weight.grad.clone(), hidden.grad.clone())

    def grad_error(grads):
        return max(float((grads[name] - reference[name]).abs().max()) for name in reference)

    # FSDP2: fully_shard each decoder layer and the root over a 2-rank CPU mesh.
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = lora_model(model_dir)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    loss = forward_loss(model, ids)
    raw = float(get_regularizer("lora_l2")(parameter_inputs(model))[1]["value"])  # the function alone: this rank's part
    total, values = terms(model, specs)
    (loss + total).backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.requires_grad}
    record["fsdp2"] = {**values, "grad_error": grad_error(grads), "raw_lora_l2": raw,
                       "sharded": type(next(p for p in model.parameters() if p.requires_grad)).__name__}
    sharded_head = torch.nn.Linear(64, 262, bias=False)
    sharded_head.load_state_dict(head.state_dict())
    fully_shard(sharded_head, mesh=mesh)
    hidden_fsdp = hidden.detach().clone().requires_grad_(True)
    logps, entropies, objective = kernel(sharded_head.weight, hidden_fsdp, index)
    objective.backward()
    record["fsdp2"]["kernel_error"] = max(
        float((logps - head_reference[0]).abs().max()), float((entropies - head_reference[1]).abs().max()),
        float((sharded_head.weight.grad.full_tensor() - head_reference[2]).abs().max()),
        float((hidden_fsdp.grad - head_reference[3]).abs().max()))

    # DeepSpeed ZeRO-3 on the CPU accelerator (gloo). Its shared-memory all-reduce op is a JIT C++ build
    # (~1 min the first time): plain torch.distributed collectives give the same sums.
    import deepspeed
    import deepspeed.comm.torch as deepspeed_comm

    deepspeed_comm.build_shm_op = lambda: None
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "torch_adam": True}}}
    model = lora_model(model_dir)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config,
                                           model_parameters=[p for p in model.parameters() if p.requires_grad])
    partitioned_shape = list(next(p for p in engine.module.parameters() if p.requires_grad).shape)
    loss = forward_loss(engine, ids)
    raw = float(get_regularizer("lora_l2")(parameter_inputs(engine.module))[0])  # the 0.0
    total, values = terms(engine.module, specs)
    engine.backward(loss + total)
    from deepspeed.utils import safe_get_full_grad

    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters() if p.requires_grad}
    record["zero3"] = {**values, "grad_error": grad_error(grads), "raw_lora_l2": raw,
                       "partitioned_shape": partitioned_shape}
    with deepspeed.zero.Init(config_dict_or_path=config):  # a partitioned output head
        head3 = torch.nn.Linear(64, 262, bias=False)
    try:
        kernel(head3.weight, hidden.detach(), index)
        record["zero3"]["released_head_error"] = None
    except ValueError as error:
        record["zero3"]["released_head_error"] = str(error)
    with deepspeed.zero.GatheredParameters([head3.weight], modifier_rank=0):
        if rank == 0:
            head3.weight.data.copy_(head.weight.data)
    with gathered_parameters([head3.weight]):
        logps, entropies, _ = kernel(head3.weight, hidden.detach(), index)
    record["zero3"]["kernel_error"] = max(float((logps - head_reference[0]).abs().max()),
                                          float((entropies - head_reference[1]).abs().max()))

    # A reward model created after a ZeRO-3 config exists (what TrainingArguments does under accelerate).
    from transformers import AutoModelForSequenceClassification
    from transformers.integrations import HfDeepSpeedConfig

    from grpo_custom.rewards.reward_model import RewardModelReward
    from grpo_custom.testing.tiny_model import load_tiny_model

    _, tokenizer = load_tiny_model(model_dir)
    texts = ["a short answer", "another, longer answer of some words"]
    expected = RewardModelReward(rm_dir, tokenizer=tokenizer, device="cpu").score_texts(texts)
    hf_config = HfDeepSpeedConfig(config)  # noqa: F841  (transformers keeps a weak reference while it lives)
    plain = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    got = RewardModelReward(rm_dir, tokenizer=tokenizer, device="cpu").score_texts(texts)
    record["reward_model"] = {"plain_load_partitioned": list(plain.score.weight.shape) == [0],
                              "score_error": float((got - expected).abs().max())}
    try:
        RewardModelReward(plain, tokenizer=tokenizer, device="cpu")
        record["reward_model"]["sharded_instance_error"] = None
    except ValueError as error:
        record["reward_model"]["sharded_instance_error"] = str(error)
    del hf_config

    with open(os.path.join(out, f"record-{rank}.json"), "w") as handle:
        json.dump(record, handle)
    dist.barrier()


if __name__ == "__main__":
    from tests.helpers import run_worker

    run_worker(main, sys.argv[1], sys.argv[2], sys.argv[3])
