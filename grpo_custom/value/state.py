"""The critic's files: ``value_head.pt`` (weights + settings, beside the adapter) and ``value_optimizer.pt``
(the head's optimizer state, in every checkpoint)."""
from __future__ import annotations

import os

import torch

HEAD_FILE = "value_head.pt"
OPTIMIZER_FILE = "value_optimizer.pt"


def save_head(critic, directory: str) -> str:
    """Write ``{"config": settings, "layers": hidden-state indices, "state_dict": head weights, "adapter": the
    critic adapter's weights by parameter name (empty for the head kinds)}``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, HEAD_FILE)
    state = {"config": critic.config.to_dict(), "layers": list(critic.layers),
             "state_dict": {k: v.detach().cpu() for k, v in critic.head.state_dict().items()},
             "adapter": {k: v.detach().cpu() for k, v in critic.adapter_params.items()}}
    _atomic_save(state, path)
    return path


def save_checkpoint(critic, folder: str) -> None:
    """Head weights and the head's optimizer state into a checkpoint folder (each file written atomically)."""
    save_head(critic, folder)
    _atomic_save(critic.optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))


def load_checkpoint(critic, folder: str) -> None:
    """Restore what :func:`save_checkpoint` wrote.

    Raises:
        FileNotFoundError: the checkpoint lacks a critic file (naming it): the run would restart the critic.
        ValueError: the saved head reads other hidden states than this run's (naming both), or the saved critic
            adapter has other parameters than this run's (naming the first difference).
    """
    paths = [os.path.join(folder, name) for name in (HEAD_FILE, OPTIMIZER_FILE)]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Resuming from {folder} with value_function set, but {path} is missing: the "
                                    "critic's weights and optimizer state would be lost.")
    head = torch.load(paths[0], map_location="cpu", weights_only=True)
    if list(head["layers"]) != list(critic.layers):
        raise ValueError(f"{paths[0]} holds a value head on hidden states {head['layers']}, this run reads "
                         f"{list(critic.layers)} (value_function['layers']).")
    saved_adapter = head.get("adapter", {})
    if sorted(saved_adapter) != sorted(critic.adapter_params):
        missing = sorted(set(critic.adapter_params) ^ set(saved_adapter))
        raise ValueError(f"{paths[0]} holds a critic adapter with {len(saved_adapter)} tensors, this run's has "
                         f"{len(critic.adapter_params)} (value_function['kind']={critic.config.kind!r}); first "
                         f"difference: {missing[:1]}.")
    critic.head.load_state_dict(head["state_dict"])
    with torch.no_grad():
        for name, param in critic.adapter_params.items():
            param.copy_(saved_adapter[name])
    critic.optimizer.load_state_dict(torch.load(paths[1], map_location="cpu", weights_only=True))


def load_head(path: str) -> dict:
    """Read a ``value_head.pt`` (e.g. written by ``save_model``): ``{"config": the value_function settings,
    "layers": hidden-state indices, "state_dict": the head's weights, "adapter": the critic adapter's weights by
    parameter name (empty for the head kinds)}``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _atomic_save(obj, path: str) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save(obj, temporary)
    os.replace(temporary, path)
