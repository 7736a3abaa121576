"""Import a Python file as a module under a chosen name (used for the fork and pristine model code)."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def exec_module_from_file(name: str, path: str) -> ModuleType:
    """Execute ``path`` as module ``name``, registered in ``sys.modules`` (removed again if it fails)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load {name!r} from {path!r}: no loadable source file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
