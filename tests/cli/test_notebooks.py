"""The notebooks: the CPU quickstart runs end to end in a kernel of this interpreter and shows what it claims;
the Colab notebook (GPU and downloads: not run here) is valid, compiles, patches Unsloth before building the
trainer, and its reward, schedule and config cells build a valid grpo-custom config on the pinned TRL."""
from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart_cpu.ipynb"
COLAB = NOTEBOOKS / "unsloth_colab.ipynb"
QUICKSTART_STEPS = 60
CELL_TIMEOUT_S = 240
RUN_BUDGET_S = 170  # the whole notebook, kernel start included (~20 s measured on a shared 2-core CPU)
# Mean length reward (-|len - 8| / 8), last 10 steps minus first 10: the notebook (seed 0) measured -0.836 -> -0.542
# (+0.29); seed 1 -0.852 -> -0.530 (+0.32).
MIN_REWARD_GAIN = 0.1
# Mean letter_fraction, last 10 steps minus steps 21-30 (before its stage starts at update 30): seed 0 measured
# 0.132 -> 0.349 (+0.22), seed 1 0.066 -> 0.603 (+0.54). Unscaled (length reward -8..0) it fell instead.
MIN_LETTER_GAIN = 0.1
KERNEL_PYTHON_MARK = "KERNEL_PYTHON="


# ---------------------------------------------------------------------------------------------
# The CPU quickstart, executed
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart executed by nbclient, with a first cell that prints the kernel's interpreter."""
    from nbclient import NotebookClient

    notebook = nbformat.read(QUICKSTART, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(f"import sys\nprint({KERNEL_PYTHON_MARK!r} + sys.executable)"))
    work = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as env:  # the kernel process inherits this environment
        env.setenv("GRPO_CUSTOM_CACHE_DIR", str(work / "grpo_custom_cache"))
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("HF_DATASETS_OFFLINE", "1")
        env.setenv("TRANSFORMERS_OFFLINE", "1")
        env.setenv("TOKENIZERS_PARALLELISM", "false")
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(work)}})
        start = time.monotonic()
        client.execute()
        elapsed = time.monotonic() - start
    return notebook, elapsed


def _stdout(notebook, tag: str) -> str:
    """Printed output of the one code cell tagged ``tag``."""
    cells = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return "".join(output.text for output in cells[0].outputs
                   if output.output_type == "stream" and output.name == "stdout")


def _printed_value(text: str, label: str):
    """The Python literal printed after ``label`` on its line."""
    match = re.search(re.escape(label) + r"(.+)$", text, re.MULTILINE)
    assert match, f"{label!r} not printed in:\n{text}"
    return ast.literal_eval(match.group(1).strip())


def test_quickstart_runs_in_this_interpreter_within_budget(quickstart_run):
    notebook, elapsed = quickstart_run
    probe = "".join(output.get("text", "") for output in notebook.cells[0].outputs)
    assert probe.strip() == KERNEL_PYTHON_MARK + sys.executable
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors
    assert elapsed < RUN_BUDGET_S, f"the quickstart took {elapsed:.0f} s"


def test_quickstart_reward_check_flags_the_wrong_reward_and_passes_the_fixed_one(quickstart_run):
    text = _stdout(quickstart_run[0], "reward-check")
    assert "Reward check of 'wrong_length_reward': PROBLEMS FOUND" in text
    assert "'wrong_length_reward' prefers completions far from the target length 8 chars" in text
    assert "Reward check of 'length_reward': OK" in text
    assert "PROBLEM" not in text.split("Reward check of 'length_reward'")[1].replace("PROBLEMS FOUND", "")
    assert "wrong reward flagged: True; fixed reward passes: True" in text


def test_quickstart_trains_every_step_and_the_length_reward_improves(quickstart_run):
    notebook, _ = quickstart_run
    assert f"steps trained: {QUICKSTART_STEPS} of {QUICKSTART_STEPS}" in _stdout(notebook, "train")
    summary = _stdout(notebook, "summary")
    assert _printed_value(summary, "logged steps with rewards:") == QUICKSTART_STEPS
    first = _printed_value(summary, "mean length_reward, first 10 steps:")
    last = _printed_value(summary, "mean length_reward, last 10 steps:")
    assert first < -0.6  # the random policy runs on past 8 characters (-|len - 8| / 8)
    assert last - first > MIN_REWARD_GAIN, (first, last)
    assert last <= 0.0  # -|len - 8| / 8 is at most 0


def test_quickstart_second_objective_rises_after_its_stage_starts(quickstart_run):
    summary = _stdout(quickstart_run[0], "summary")
    before = _printed_value(summary, "mean letter_fraction, steps 21-30 (before its stage):")
    end = _printed_value(summary, "mean letter_fraction, last 10 steps:")
    assert end - before > MIN_LETTER_GAIN, (before, end)


def test_quickstart_logs_the_scheduled_reward_weight_and_kl_coefficient(quickstart_run):
    summary = _stdout(quickstart_run[0], "summary")
    # Log step s uses the schedule at update s - 1. Letters blend in linearly over updates 30..35;
    # the KL coefficient is Schedule.linear(0, 0.001, 30, 60).
    weights = _printed_value(summary, "letter_fraction weight at steps [1, 31, 33, 36, 60]:")
    assert weights == pytest.approx([0.0, 0.0, 0.4, 1.0, 1.0], abs=1e-6)
    kl_coefs = _printed_value(summary, "KL coef at steps [1, 31, 46, 60]:")
    assert kl_coefs == pytest.approx([0.0, 0.0, 0.0005, 0.001 * 29 / 30], abs=1e-6)
    assert _printed_value(summary, "per-token KL, last step:") > 0.0  # the policy moved off the base model


def test_quickstart_plots_and_prints_the_effective_trainer_config(quickstart_run):
    notebook, _ = quickstart_run
    plot_cell = next(cell for cell in notebook.cells if "plot" in cell.metadata.get("tags", []))
    assert any("image/png" in output.get("data", {}) for output in plot_cell.outputs)
    text = _stdout(notebook, "effective-config")
    assert "'advantage_estimator': 'rloo'" in text
    assert "'regularizers': ['regularizers/kl']" in text
    assert "'beta': 0.0" in text
    assert "changed from what was asked: {}" in text


@pytest.mark.parametrize("path", [QUICKSTART, COLAB], ids=lambda path: path.name)
def test_notebooks_are_saved_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index} has outputs"


# ---------------------------------------------------------------------------------------------
# The Colab notebook, read (not run)
# ---------------------------------------------------------------------------------------------


def _python_source(cell) -> str:
    """A code cell's source without IPython magics and shell lines (``%pip``, ``!cmd``)."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def _colab_code_cells():
    return [cell for cell in nbformat.read(COLAB, as_version=4).cells if cell.cell_type == "code"]


def test_colab_notebook_is_valid_nbformat_v4():
    raw = json.loads(COLAB.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4
    nbformat.validate(nbformat.reads(json.dumps(raw), as_version=4))
    assert any(cell["cell_type"] == "markdown" for cell in raw["cells"])


def test_colab_code_cells_compile():
    cells = _colab_code_cells()
    assert len(cells) >= 8
    for index, cell in enumerate(cells):
        compile(_python_source(cell), f"unsloth_colab.ipynb code cell {index}", "exec")


def _install_namespace() -> dict:
    """The Colab install cell's Python (magics stripped) run once, with the source placeholder left in."""
    (cell,) = [cell for cell in _colab_code_cells() if "install" in cell.metadata.get("tags", [])]
    source = _python_source(cell).replace("REQUIREMENT = grpo_custom_requirement(GRPO_CUSTOM_SOURCE)", "")
    namespace: dict = {}
    exec(compile(source, "unsloth_colab.ipynb install cell", "exec"), namespace)
    return namespace


def test_colab_install_source_is_one_validated_variable(tmp_path):
    namespace = _install_namespace()
    requirement = namespace["grpo_custom_requirement"]
    with pytest.raises(ValueError, match="Set GRPO_CUSTOM_SOURCE"):
        requirement(namespace["GRPO_CUSTOM_SOURCE"])  # the placeholder as shipped
    with pytest.raises(ValueError, match="not a git URL"):
        requirement("git+https://example.org/org/grpo custom.git")
    with pytest.raises(ValueError, match="neither a git\\+https URL nor a checkout"):
        requirement(str(tmp_path))  # a directory without pyproject.toml
    assert requirement("git+https://example.org/org/grpo-custom.git@v0.1.0") == (
        "grpo-custom[unsloth] @ git+https://example.org/org/grpo-custom.git@v0.1.0")
    checkout = Path(__file__).resolve().parents[2]
    assert requirement(str(checkout)) == f"grpo-custom[unsloth] @ file://{checkout}"


def test_colab_pins_accelerator_libraries_for_colabs_torch_and_takes_unsloth_from_the_extra():
    namespace = _install_namespace()
    assert namespace["COLAB_TORCH"] == "2.11."
    assert sorted(namespace["ACCELERATOR_PINS"]) == ["bitsandbytes==0.50.2", "torchao==0.18.0"]
    (cell,) = [cell for cell in _colab_code_cells() if "install" in cell.metadata.get("tags", [])]
    shell = [line.strip() for line in cell.source.splitlines() if line.lstrip().startswith("%")]
    assert shell == ['%pip install -q "{REQUIREMENT}" {PINS}', "%pip uninstall -q -y xformers"]
    assert "unsloth==" not in cell.source and "unsloth_zoo==" not in cell.source  # versions come from [unsloth]


def test_colab_installs_and_runs_the_doctor_through_shell_lines():
    shell_lines = [line.strip() for cell in _colab_code_cells() for line in cell.source.splitlines()
                   if line.lstrip().startswith(("%", "!"))]
    assert any(line.startswith("%pip install") and "{REQUIREMENT}" in line for line in shell_lines)
    assert "!grpo-custom doctor" in shell_lines


def _positions(predicate) -> list[tuple[int, int]]:
    """(code cell index, line) of every AST node of the Colab notebook for which ``predicate`` holds."""
    found = []
    for index, cell in enumerate(_colab_code_cells()):
        for node in ast.walk(ast.parse(_python_source(cell))):
            if predicate(node):
                found.append((index, node.lineno))
    return sorted(found)


def _calls(name: str):
    def predicate(node) -> bool:
        if not isinstance(node, ast.Call):
            return False
        function = node.func
        return (isinstance(function, ast.Name) and function.id == name) or (
            isinstance(function, ast.Attribute) and function.attr == name)

    return predicate


def _imports_from(module: str, name: str):
    def predicate(node) -> bool:
        return isinstance(node, ast.ImportFrom) and node.module == module and any(
            alias.name == name for alias in node.names)

    return predicate


def test_colab_patches_unsloth_before_loading_the_model_and_building_the_trainer():
    patch_calls = _positions(_calls("patch_unsloth"))
    assert len(patch_calls) == 1
    patched_at = patch_calls[0]
    later = {
        "GRPOTrainer(...)": _positions(_calls("GRPOTrainer")),
        "GRPOConfig(...)": _positions(_calls("GRPOConfig")),
        # grpo_custom resolves these names on access: imported before the patch they stay the plain classes
        "from grpo_custom import GRPOTrainer": _positions(_imports_from("grpo_custom", "GRPOTrainer")),
        "from grpo_custom import GRPOConfig": _positions(_imports_from("grpo_custom", "GRPOConfig")),
        "FastLanguageModel.from_pretrained(...)": _positions(_calls("from_pretrained")),
    }
    for what, positions in later.items():
        assert positions, f"the Colab notebook has no {what}"
        assert min(positions) > patched_at, f"{what} at {min(positions)} comes before patch_unsloth() at {patched_at}"


def test_colab_loads_qwen_in_4_bits_with_lora():
    cells = _colab_code_cells()
    (load,) = [node for cell in cells for node in ast.walk(ast.parse(_python_source(cell)))
               if _calls("from_pretrained")(node)]
    assert ast.literal_eval(load.args[0]) == "unsloth/Qwen2.5-0.5B-Instruct"
    keywords = {keyword.arg for keyword in load.keywords}
    assert {"load_in_4bit", "max_seq_length"} <= keywords
    assert next(k for k in load.keywords if k.arg == "load_in_4bit").value.value is True
    assert _positions(_calls("get_peft_model")) and _positions(_calls("effective_config"))


def test_colab_reward_schedule_and_config_cells_build_a_valid_config(tmp_path, monkeypatch):
    """The Colab cells tagged rewards and config, run on CPU with the plain fork's GRPOConfig."""
    import grpo_custom
    from grpo_custom.algorithms.regularizers import RegularizerSpec

    monkeypatch.chdir(tmp_path)  # the config's output_dir is relative
    cells = {tag: cell for cell in _colab_code_cells() for tag in cell.metadata.get("tags", [])}
    regularizer_cell = next(cell for cell in _colab_code_cells() if "regularizers = [" in cell.source)
    namespace = {name: getattr(grpo_custom, name) for name in ("GRPOConfig", "RewardSchedule", "Schedule", "Stage")}
    namespace["grpo_custom"] = grpo_custom
    for cell in (cells["rewards"], regularizer_cell, cells["config"]):
        exec(compile(_python_source(cell), "unsloth_colab.ipynb", "exec"), namespace)

    config, reward_funcs = namespace["config"], namespace["reward_funcs"]
    names = [function.__name__ for function in reward_funcs]
    assert names == ["format_reward", "math_answer_reward"]
    config.reward_schedule.validate_reward_names(names)
    assert config.reward_schedule.weights_at(0, config.max_steps) == {"format_reward": 1.0, "math_answer_reward": 0.5}
    assert config.reward_schedule.weights_at(config.max_steps - 1, config.max_steps) == {
        "format_reward": 0.2, "math_answer_reward": 1.0}
    assert config.advantage_estimator == "rloo" and config.beta == 0.0
    specs = config.regularizer_specs
    assert all(isinstance(spec, RegularizerSpec) for spec in specs)
    assert [(spec.name, spec.placement) for spec in specs] == [("kl", "loss"), ("entropy", "loss")]
    assert specs[0].options == {"kind": "k2"}
    assert isinstance(specs[0].coef, grpo_custom.Schedule)
    assert specs[0].coef(0) == 0.0 and specs[0].coef(100) == pytest.approx(0.04)
    # A well-formed, correct completion scores 1.0 on both rewards (the cell's own example).
    good = [[{"role": "assistant", "content": "<think>6 * 7 = 42</think> <answer>42</answer>"}]]
    assert [reward(prompts=[None], completions=good, solution=["42"]) for reward in reward_funcs] == [[1.0], [1.0]]
    wrong = [[{"role": "assistant", "content": "the answer is 41"}]]
    assert [reward(prompts=[None], completions=wrong, solution=["42"]) for reward in reward_funcs] == [[0.0], [0.0]]
