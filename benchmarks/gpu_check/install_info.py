"""GPU check, part "install": what was installed, where each package imports from, and the tree made importable.

    python benchmarks/gpu_check/install_info.py --result PATH [--link] [--wheels DIR]

The carried wheels are installed by ``scripts/gpu_check.sh`` (``pip install --no-index --no-deps --target``);
this records their names and sizes, and for each package the check needs, where it would be imported
from (``importlib.util.find_spec``, nothing is imported).

``--link``: make the working tree's ``grpo_custom`` importable as it is, without an install: for every
``[tool.setuptools.package-dir]`` entry of pyproject.toml (a subpackage kept elsewhere in the tree, e.g.
``grpo_custom.patches = "patches"``) whose package folder is missing, a relative symbolic link is made in
the tree (on the device machine's copy only). The tree then always comes first (PYTHONPATH, pytest's
rootdir, a subprocess's cwd), so every process runs the tree's code; the grpo-custom wheel only supplies
the package metadata. Without ``--link`` (dry run) the links that would be made are only listed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tomllib
from pathlib import Path

from gpu_check_common import ResultFile

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("grpo_custom", "trl", "unsloth", "unsloth_zoo", "datasets", "dill", "multiprocess", "peft",
           "bitsandbytes", "transformers", "torch", "triton", "accelerate", "xformers", "vllm")


def package_dir_links(root: Path) -> list[tuple[Path, Path]]:
    """(link, target) pairs that make each mapped subpackage importable from the tree."""
    with open(root / "pyproject.toml", "rb") as handle:
        setuptools = tomllib.load(handle).get("tool", {}).get("setuptools", {})
    links = []
    for package, folder in setuptools.get("package-dir", {}).items():
        if not package:  # a src layout: the shell puts that folder on PYTHONPATH instead
            continue
        link, target = root / package.replace(".", "/"), root / folder
        if target.is_dir() and not link.exists() and link.parent.is_dir():
            links.append((link, target))
    return links


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", default=None)
    parser.add_argument("--link", action="store_true")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"))
    options = parser.parse_args(argv)
    result = ResultFile(options.result)
    wheels = sorted(Path(options.wheels).glob("*.whl"))
    result.set("wheels", [{"name": w.name, "mib": round(w.stat().st_size / 2**20, 2)} for w in wheels])
    result.set("wheels_total_mib", round(sum(w.stat().st_size for w in wheels) / 2**20, 2))
    manifest = Path(options.wheels) / "MANIFEST.txt"
    if manifest.exists():
        result.set("manifest_notes", [line[2:] for line in manifest.read_text().splitlines() if line.startswith("# ")])
    made = []
    for link, target in package_dir_links(ROOT):
        if options.link:
            os.symlink(os.path.relpath(target, link.parent), link, target_is_directory=True)
        made.append(f"{link.relative_to(ROOT)} -> {target.relative_to(ROOT)}")
    result.set("tree_links" if options.link else "tree_links_needed_without_install", made)
    origins = {}
    for name in MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as error:
            origins[name] = f"error: {error}"
            continue
        origins[name] = None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))
    result.update({"import_origins": origins, "python": sys.executable,
                   "pythonpath": os.environ.get("PYTHONPATH", "")})
    for key, value in result.figures.items():
        print(f"{key}: {value}")
    missing = [name for name in ("grpo_custom", "trl", "unsloth", "unsloth_zoo", "datasets", "peft")
               if origins.get(name) is None or str(origins[name]).startswith("error")]
    if missing:
        result.note(f"not importable: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
