"""Layer 4: Unsloth integration: compiling the fork with Unsloth and grpo-custom's terms inside its fast loss.
"""
