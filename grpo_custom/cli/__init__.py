"""Layer 5: the ``grpo-custom`` command line (``demo``, ``vendor``, ``diff``, ``doctor``).
"""
