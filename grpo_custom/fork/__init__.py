"""Layer 3: grpo-custom's fork of TRL's GRPO trainer: generating it, its config, and the hooks its edits call.
"""
