"""Build ``GRPOConfig(advantage_estimator="gae")`` without ``value_function``, on TRL's path or under the patch.

``python -m tests.value.config_check_scenario trl|unsloth OUT.json`` (started by tests/value/test_value_config.py;
the ``unsloth`` side with Unsloth's GPU code path on CPU). Writes, per config class a user reaches (grpo_custom's, and
under the patch also ``trl.GRPOConfig``, which the patch rebinds), the class and the error building it raised.
"""
from __future__ import annotations

import json
import sys
import tempfile


def run(side: str) -> dict:
    import grpo_custom
    from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE

    if side == "unsloth":
        grpo_custom.patch_unsloth()
    classes = {"grpo_custom.GRPOConfig": grpo_custom.GRPOConfig}
    if side == "unsloth":
        import trl

        from grpo_custom.unsloth.patch import active_patch

        classes["trl.GRPOConfig"] = trl.GRPOConfig
        classes["patched config_class"] = active_patch().config_class  # the class whose __init__ records Unsloth's
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for label, config_class in classes.items():
            common = dict(output_dir=work, use_cpu=True, report_to="none", bf16=False, fp16=False)
            try:
                config_class(**common, advantage_estimator="gae")
                error = None
            except ValueError as raised:
                error = str(raised)
            with_critic = config_class(**common, advantage_estimator="gae", value_function={"kind": "head"})
            results[label] = {"class": f"{config_class.__module__}.{config_class.__qualname__}", "error": error,
                              "with_critic": type(with_critic.value_function_config).__name__,
                              "honest": hasattr(with_critic, REQUESTED_ATTRIBUTE)}  # the patch recorded the request
    return results


if __name__ == "__main__":
    side, out = sys.argv[1], sys.argv[2]
    with open(out, "w") as handle:
        json.dump(run(side), handle)
