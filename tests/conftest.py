"""Shared fixtures: offline environment, the locally built tiny model, and trainer factories."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch



@pytest.fixture(scope="session", autouse=True)
def _session_environment(tmp_path_factory):
    """A private fork cache and steady single-thread CPU math for every test."""
    os.environ.setdefault("GRPO_CUSTOM_CACHE_DIR", str(tmp_path_factory.mktemp("grpo_custom_cache")))
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Directory holding the offline tiny Qwen2 model and byte-level tokenizer."""
    from grpo_custom.testing.tiny_model import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny_model")))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _torch_logprob_kernel_on_cpu():
    """TRL 1.15's log-prob kernel is Triton-only: use the pure-torch stand-in when there is no GPU."""
    if torch.cuda.is_available():
        yield
        return
    from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

    with use_torch_logprob_kernel():
        yield
