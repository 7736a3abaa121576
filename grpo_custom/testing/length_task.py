"""Data for the toy length-control task of ``grpo-custom demo`` (made locally, no download).

The task's reward is :func:`grpo_custom.rewards.length_reward` with ``shape="neg_abs"``:
``-|target - len(completion)|``, correctly signed for a maximizer (0 is best).
"""
from __future__ import annotations


def length_dataset(num_prompts: int = 64, seed: int = 0):
    """A ``datasets.Dataset`` of short plain-text prompts (column ``prompt``)."""
    import random

    from datasets import Dataset

    words = ["tell", "me", "about", "cats", "dogs", "the", "sea", "a", "story", "why", "sky", "blue"]
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) + ":" for _ in range(num_prompts)]
    return Dataset.from_dict({"prompt": prompts})
