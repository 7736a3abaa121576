"""Every code block of README.md and docs/*.md runs as written: CPU, the offline tiny model, no download.

Convention (stated in docs/README.md): fenced ``python`` blocks and ``bash`` blocks are code and run; any
other fence (``text``, ``console`` output, tables) is not code. A code block that cannot run here is
marked on the line right before its fence with ``<!-- gpu-only: reason -->`` (needs a CUDA GPU) or
``<!-- not-run: reason -->`` (e.g. the set-up command CI itself runs), and the test reports it as skipped
with that reason. The blocks of one page run in order in one fresh interpreter (one namespace, like a
notebook) inside an empty temporary directory, so a page's later blocks may use its earlier ones. Pages
share one interpreter (importing torch/TRL takes ~20 s on a 2-core CI machine), each in its own namespace,
except a page that calls ``patch_unsloth()``, which changes process-wide state and gets its own.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MARKER = re.compile(r"^<!--\s*(gpu-only|not-run)\s*:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
PAGE_TIMEOUT_S = 300  # per page


@dataclass
class Block:
    """One fenced code block: where it is, its language, its source and why it is skipped (if it is)."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    skip_kind: str | None = None
    skip_reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` (every language), with a skip marker from the line before the fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if not opening:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        blocks.append(Block(page, index + 1, language, "\n".join(lines[index + 1:end]) + "\n",
                            marker.group(1) if marker else None, marker.group(2) if marker else None))
        index = end + 1
    return blocks


def runnable(page: Path) -> list[Block]:
    return [block for block in code_blocks(page) if block.language in RUN_LANGUAGES and block.skip_kind is None]


_DRIVER = r"""
import json, os, subprocess, sys, traceback
pages = json.load(open(sys.argv[1]))
results = {}
for page, blocks in pages.items():
    home = os.path.join(sys.argv[3], str(len(results)))
    os.makedirs(home)
    os.chdir(home)
    namespace = {"__name__": "__main__"}
    results[page] = None
    for block in blocks:
        print(f"\n=== {block['label']} ({block['language']})", flush=True)
        try:
            if block["language"] == "python":
                exec(compile(block["source"], block["label"], "exec"), namespace)
            else:
                subprocess.run(["bash", "-euo", "pipefail", "-c", block["source"]], check=True)
        except BaseException:
            results[page] = f"{block['label']} failed:\n{traceback.format_exc()}"
            print(results[page], flush=True)
            break
    json.dump(results, open(sys.argv[2], "w"))
"""


def _own_process(page: Path) -> bool:
    """Pages that patch Unsloth change process-wide state: they run in an interpreter of their own."""
    return any("patch_unsloth(" in block.source for block in runnable(page))


def run_pages(pages: list[Path], work: Path) -> tuple[dict, str]:
    """Run each page's runnable blocks in order (one namespace and working directory per page) in one fresh
    interpreter; returns ``({page label: None or the failure}, output)``."""
    work.mkdir(parents=True, exist_ok=True)
    plan = {str(page.relative_to(ROOT)): [{"label": b.label, "language": RUN_LANGUAGES[b.language],
                                           "source": b.source} for b in runnable(page)] for page in pages}
    (work / "pages.json").write_text(json.dumps(plan))
    (work / "driver.py").write_text(_DRIVER)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UNSLOTH_", "PYTEST_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "GRPO_CUSTOM_CACHE_DIR": str(work / "fork_cache"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    completed = subprocess.run([sys.executable, str(work / "driver.py"), str(work / "pages.json"),
                                str(work / "results.json"), str(work / "run")], cwd=work, env=env,
                               capture_output=True, text=True, timeout=PAGE_TIMEOUT_S * len(pages))
    output = completed.stdout + completed.stderr
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    for label in plan:
        results.setdefault(label, f"the interpreter ended before this page ran (rc {completed.returncode})")
    return results, output


@pytest.fixture(scope="module")
def page_results(tmp_path_factory):
    """Every page run once: the pages that patch Unsloth each in an interpreter of their own, the rest together."""
    results, outputs = {}, {}
    shared = [page for page in PAGES if runnable(page) and not _own_process(page)]
    groups = ([shared] if shared else []) + [[page] for page in PAGES if runnable(page) and _own_process(page)]
    for index, group in enumerate(groups):
        found, output = run_pages(group, tmp_path_factory.mktemp(f"docs{index}"))
        results.update(found)
        outputs.update({label: output for label in found})
    return results, outputs


@pytest.mark.parametrize("page", [page for page in PAGES if runnable(page)], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_code_block_of_the_page_runs_as_written(page, page_results):
    label = str(page.relative_to(ROOT))
    results, outputs = page_results
    assert results[label] is None, f"{results[label]}\n--- interpreter output (tail) ---\n{outputs[label][-4000:]}"


MARKED = [block for page in PAGES for block in code_blocks(page)
          if block.language in RUN_LANGUAGES and block.skip_kind is not None]


@pytest.mark.parametrize("block", MARKED, ids=lambda block: block.label)
def test_marked_block_is_skipped_with_its_reason(block):
    pytest.skip(f"{block.skip_kind}: {block.skip_reason}")


def test_every_code_block_is_run_or_marked_with_a_reason():
    for page in PAGES:
        for block in code_blocks(page):
            if block.skip_kind is not None:
                assert block.skip_reason, f"{block.label}: a {block.skip_kind} marker needs its reason"
                assert block.language in RUN_LANGUAGES, f"{block.label}: marker on a {block.language!r} block"
            assert block.language != "" or not block.source.strip(), (
                f"{block.label}: give the fence a language (python/bash to run it, text for output)")


def test_the_marker_parser_reads_skips_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n<!-- gpu-only: needs 4-bit -->\n```python\nx = 1\n```\n\n```text\nout\n```\n"
                    "```bash\necho hi\n```\n")
    blocks = code_blocks(page)
    assert [(b.language, b.skip_kind, b.skip_reason, b.line) for b in blocks] == [
        ("python", "gpu-only", "needs 4-bit", 3), ("text", None, None, 7), ("bash", None, None, 10)]


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
