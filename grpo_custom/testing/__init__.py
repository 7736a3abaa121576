"""Offline helpers shared by the demo, notebooks, tests and benchmarks: tiny model, length task, CPU log-probs.

Nothing here downloads anything; importing this package imports torch but not transformers or TRL.
"""
from .cpu_logprob import use_torch_logprob_kernel
from .length_task import length_dataset
from .tiny_model import build_tiny_model, build_tiny_tokenizer, load_tiny_model, save_tiny_model

__all__ = [
    "build_tiny_model",
    "build_tiny_tokenizer",
    "length_dataset",
    "load_tiny_model",
    "save_tiny_model",
    "use_torch_logprob_kernel",
]
