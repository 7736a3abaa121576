"""setuptools' package list: every ``grpo_custom*`` package found on disk, plus ``grpo_custom.patches``.

The fork's edits live in the top-level ``patches/`` folder and install as ``grpo_custom.patches``
(``[tool.setuptools.package-dir]`` in pyproject.toml); ``packages.find`` in pyproject.toml cannot add a
package whose folder is elsewhere, so discovery runs here. Everything else is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["grpo_custom", "grpo_custom.*"]), "grpo_custom.patches"])
