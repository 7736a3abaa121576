"""The package's layers (ARCHITECTURE.md): each module imports only from its own layer or lower ones.

Order, lowest first: utils < algorithms < rewards < value < fork (with ``patches``, the fork's edits) < unsloth < cli.
``experiments`` (compare, search) sits beside the cli, at its rank.
``testing`` may import only utils, algorithms and rewards, and only the cli and experiments import it. The package root ``grpo_custom/__init__.py`` is the
facade and exempt, but no other module may import the package root itself. Every import counts: absolute and
relative, at module level and inside functions.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "grpo_custom"
LAYERS = ("utils", "algorithms", "rewards", "value", "fork", "unsloth", "cli")
RANK = {**{name: rank for rank, name in enumerate(LAYERS)}, "patches": LAYERS.index("fork"), "__main__": len(LAYERS) - 1,
        "experiments": LAYERS.index("cli")}  # beside the cli: builds trainers through the user's make_trainer
TESTING_MAY_IMPORT = {"utils", "algorithms", "rewards", "testing"}
TESTING_IMPORTED_BY = {"cli", "__main__", "testing", "experiments"}
MAX_LINES = 450


def package_sources() -> dict[str, tuple[Path, bool]]:
    """``{module name: (file, is_package)}`` for every module of grpo_custom, ``patches/`` as grpo_custom.patches."""
    found = {}
    for top, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "patches", f"{PACKAGE}.patches")):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = (path, is_package)
    return found


def imported_modules(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every grpo_custom import in ``tree`` (``from X import sub`` counts as X.sub
    when that is a module; importing a name from the package root counts as importing ``grpo_custom``)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((node.lineno, submodule if submodule in known else target))
    return sorted({(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")})


def layer_of(module: str) -> str | None:
    """The layer a grpo_custom module belongs to (its first component below ``grpo_custom``), or None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layering_violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every import in ``sources`` (``{module: (source text, is_package)}``) that points to a higher layer."""
    known = set(sources)
    problems = []
    for module, (text, is_package) in sorted(sources.items()):
        if module == PACKAGE:
            continue  # the facade
        layer = layer_of(module)
        if layer not in RANK and layer != "testing":
            problems.append(f"{module}: not in any layer (put it in one of {', '.join(LAYERS)} or testing)")
            continue
        for line, target in imported_modules(module, is_package, ast.parse(text), known):
            if target == PACKAGE:
                problems.append(f"{module}:{line} imports the package root {PACKAGE} (import from the defining module)")
                continue
            target_layer = layer_of(target)
            if layer == "testing":
                allowed = target_layer in TESTING_MAY_IMPORT
            elif target_layer == "testing":
                allowed = layer in TESTING_IMPORTED_BY
            else:
                allowed = target_layer in RANK and RANK[target_layer] <= RANK[layer]
            if not allowed:
                problems.append(f"{module}:{line} (layer {layer}) imports {target} (layer {target_layer})")
    return problems


def test_every_module_imports_only_its_own_or_lower_layers():
    sources = {name: (path.read_text(encoding="utf-8"), is_package)
               for name, (path, is_package) in package_sources().items()}
    assert len(sources) > 30
    problems = layering_violations(sources)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_check_catches_upward_relative_root_and_function_level_imports():
    sources = {
        "grpo_custom.algorithms.bad": ("def f():\n    from ..fork.hooks import loss\n", False),
        "grpo_custom.rewards.bad": ("import grpo_custom\n", False),
        "grpo_custom.fork.bad": ("from grpo_custom import patch_unsloth\n", False),
        "grpo_custom.testing.bad": ("from grpo_custom.fork import hooks\n", False),
        "grpo_custom.fork.hooks": ("", True),
        "grpo_custom.fork.hooks.loss": ("from ...algorithms import kl\nfrom grpo_custom.rewards import guard\n", False),
        "grpo_custom.unsloth.bad": ("from grpo_custom.testing import tiny_model\n", False),
        "grpo_custom.cli.fine": ("from grpo_custom.testing import tiny_model\nimport grpo_custom.unsloth.patch\n", False),
        "grpo_custom.testing": ("", True),
        "grpo_custom.testing.tiny_model": ("", False),
        "grpo_custom.extra": ("", False),
    }
    problems = layering_violations(sources)
    assert problems == [
        "grpo_custom.algorithms.bad:2 (layer algorithms) imports grpo_custom.fork.hooks.loss (layer fork)",
        "grpo_custom.extra: not in any layer (put it in one of utils, algorithms, rewards, value, fork, unsloth, cli or testing)",
        "grpo_custom.fork.bad:1 imports the package root grpo_custom (import from the defining module)",
        "grpo_custom.rewards.bad:1 imports the package root grpo_custom (import from the defining module)",
        "grpo_custom.testing.bad:1 (layer testing) imports grpo_custom.fork.hooks (layer fork)",
        "grpo_custom.unsloth.bad:1 (layer unsloth) imports grpo_custom.testing.tiny_model (layer testing)",
    ]


def test_no_module_is_over_the_line_limit():
    long_modules = [f"{path.relative_to(ROOT)}: {lines} lines"
                    for path, _ in package_sources().values()
                    if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long_modules, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(long_modules)


def test_every_module_states_its_job_in_a_docstring():
    missing = [name for name, (path, _) in package_sources().items()
               if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, f"modules without a docstring: {missing}"


def test_importing_the_package_imports_no_heavy_dependency():
    code = ("import sys, grpo_custom; heavy = sorted({'trl', 'transformers', 'peft', 'torch'} & set(sys.modules)); "
            "assert not heavy, heavy; assert 'patch_unsloth' in dir(grpo_custom); print(grpo_custom.__version__)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
