"""The experiment workflow: compare variants under the same conditions, search hyperparameters, from Python or YAML.

- :func:`compare` (``compare.py``): every variant on every seed, same data order, evaluation set and criteria;
  ``report.json``, ``report.md`` and plots (``report.py``, ``plots.py``), interval math in ``stats.py``.
- :func:`search` (``search.py``): Optuna, resumable SQLite study, pruning, ``best_variant.yaml`` for ``compare``.
- ``config_file.py`` / ``commands.py``: ``grpo-custom compare FILE`` and ``grpo-custom search FILE``.
- ``examples.py``: a ready ``make_trainer`` on the offline length task.

Top layer (beside ``cli``): it builds trainers through the user's ``make_trainer``; nothing below imports it.
Importing this package imports neither torch nor Optuna.
"""
from grpo_custom.experiments.compare import compare
from grpo_custom.experiments.search import search
from grpo_custom.experiments.variants import ExperimentError, Variant, load_variant

__all__ = ["ExperimentError", "Variant", "compare", "load_variant", "search"]
