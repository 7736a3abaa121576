"""grpo-custom's version string (the package root and the fork's header read it)."""
__version__ = "0.1.0"
