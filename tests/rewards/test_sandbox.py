"""Tests of grpo_custom.rewards.sandbox: outcomes, limits, the judge protocol, batch parallelism and budget."""
import time

import pytest

from grpo_custom.rewards.sandbox import code_execution_reward, extract_code, run_in_sandbox
from tests.rewards.sandbox_helpers import leftovers, live_pids, requires_os_isolation

pytestmark = requires_os_isolation


def run_clean(code, tests="", **limits):
    """run_in_sandbox, then check that nothing of the run is left: processes, host directories."""
    before = live_pids()
    result = run_in_sandbox(code, tests, **limits)
    assert leftovers(before) == []
    assert result.workdir is None and result.isolation == "os"
    return result


def test_correct_program_passes():
    result = run_clean("def add(a, b):\n    return a + b\nprint('hello')\n", "assert add(2, 3) == 5")
    assert (result.passed, result.reason) == (True, "passed")
    assert result.stdout.strip() == "hello"


def test_wrong_program_fails_with_the_assertion():
    result = run_clean("def add(a, b):\n    return a - b\n", "assert add(2, 3) == 5, 'add(2, 3) should be 5'")
    assert not result.passed
    assert result.reason == "failed: AssertionError: add(2, 3) should be 5"


def test_timeout_is_enforced_on_wall_time():
    result = run_clean("while True:\n    pass\n", "pass", timeout=1.0)
    assert (result.passed, result.reason) == (False, "timeout")
    assert 1.0 <= result.wall_time < 3.0


def test_timeout_inside_a_call_from_the_tests():
    result = run_clean("def f():\n    while True:\n        pass\n", "assert f() == 1", timeout=1.0)
    assert (result.passed, result.reason) == (False, "timeout")


def test_timeout_in_the_tests_themselves():
    result = run_clean("x = 1", "while True:\n    pass", timeout=1.0)
    assert (result.passed, result.reason) == (False, "timeout")


@pytest.mark.parametrize(
    "code, reason",
    [
        ("raise RuntimeError('boom')", "crashed: 1 (RuntimeError: boom)"),
        ("import os\nos._exit(3)", "crashed: 3"),
        ("def f(:\n  pass", "crashed: 1 (SyntaxError: invalid syntax)"),
        ("import sys\nsys.exit(0)", "failed: exited before the tests finished"),
        ("import os\nos._exit(0)", "failed: exited before the tests finished"),
    ],
    ids=["raise", "exit_code", "syntax", "sys_exit_0_before_tests", "os_exit_0_before_tests"],
)
def test_crashes_and_early_exits_score_zero(code, reason):
    result = run_clean(code, "assert False, 'tests must not be skipped'")
    assert (result.passed, result.reason) == (False, reason)


def test_memory_bomb_hits_the_memory_limit():
    result = run_clean("data = bytearray(10**10)", "pass", memory_mb=256)
    assert (result.passed, result.reason) == (False, "memory")


def test_output_flood_hits_the_output_limit():
    result = run_clean("while True:\n    print('x' * 1000)", "pass", output_bytes=100_000)
    assert (result.passed, result.reason) == (False, "output limit: the solution wrote more than the output_bytes limit")


def test_the_program_works_in_a_private_empty_directory():
    code = ("import os\nlisting = sorted(os.listdir('.'))\nopen('notes.txt', 'w').write('hi')\n"
            "def notes():\n    return open('notes.txt').read(), os.getcwd()\n")
    result = run_clean(code, "assert listing == [], listing\nassert notes() == ('hi', '/work')")
    assert result.reason == "passed"


# The judge protocol: tests run in another process and reach the solution only through calls.
@pytest.mark.parametrize(
    "code, tests",
    [
        ("def total(xs):\n    return sum(xs)",
         "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n\ncheck(total)"),
        ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n"
         "            if target - x in seen:\n                return [seen[target - x], i]\n            seen[x] = i",
         "assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]"),
        ("def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5",
         "try:\n    root(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')\n"
         "assert root(4) == 2.0"),
        ("def sort_in_place(xs):\n    xs.sort()", "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]"),
        ("def gen(n):\n    yield from range(n)", "assert list(gen(3)) == [0, 1, 2]\nassert sum(x for x in gen(4)) == 6"),
        ("def f(a, b=0):\n    return a + b", "assert f(1, b=2) == 3"),
        ("import math\ndef area(r):\n    return math.pi * r * r", "assert math.isclose(area(1), 3.14159, rel_tol=1e-3)"),
        ("from math import gcd\ndef lcm(a, b):\n    return a * b // gcd(a, b)", "assert lcm(4, 6) == 12 == 4 * 6 // gcd(4, 6)"),
        ("def f():\n    return (1, 2.5, 'x', b'y', {1: [2]}, {3}, frozenset({4}), None, True, 1 + 2j, float('inf'))",
         "assert f() == (1, 2.5, 'x', b'y', {1: [2]}, {3}, frozenset({4}), None, True, 1 + 2j, float('inf'))\n"
         "assert type(f()[0]) is int and type(f()[8]) is bool"),
        ("class Point:\n    def __init__(self, x):\n        self.x = x\n    def __repr__(self):\n        return f'Point({self.x})'",
         "p = Point(3)\nassert p.x == 3\nassert repr(p) == 'Point(3)'"),
    ],
    ids=["humaneval_check", "class_method", "expected_exception", "mutated_argument", "generator", "kwargs",
         "stdlib_module_from_solution", "from_import", "plain_values", "objects"],
)
def test_test_forms_pass_for_correct_programs(code, tests):
    result = run_clean(code, tests)
    assert (result.passed, result.reason) == (True, "passed")


@pytest.mark.parametrize(
    "code, tests, reason",
    [
        ("class A:\n    def __eq__(self, other):\n        return True\ndef f():\n    return A()",
         "assert f() == 5", "failed: AssertionError"),
        ("class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\ndef f():\n    return I(1)",
         "assert f() == 5", "failed: AssertionError"),
        ("class M:\n    pi = 0\n    def isclose(self, *a, **k):\n        return True\nmath = M()\ndef area(r):\n    return 0",
         "assert math.isclose(area(1), 3.14159)", "failed: AssertionError"),
        ("def apply(fn, x):\n    return fn(x)", "assert apply(lambda v: v, 1) == 1",
         "failed: TypeError: cannot pass a function to the solution (only plain data and its own objects)"),
        ("x = 1", "assert missing(1) == 1", "failed: NameError: name 'missing' is not defined"),
        ("def f(x):\n    raise StopIteration", "assert all(map(lambda x: f(x) == x * x, range(5)))",
         "failed: StopIteration"),
    ],
    ids=["always_equal_object", "always_equal_int_subclass", "fake_stdlib_module", "function_argument", "missing_name",
         "stop_iteration_ends_the_tests_loop"],
)
def test_values_from_the_solution_cannot_fake_comparisons(code, tests, reason):
    result = run_clean(code, tests)
    assert (result.passed, result.reason) == (False, reason)


def test_bad_tests_are_reported_as_such():
    result = run_clean("x = 1", "assert (")
    assert not result.passed and result.reason.startswith("bad tests: SyntaxError")


def test_extract_code_prefers_the_last_python_block():
    text = "Try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```\nplain\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("no fence\n```\nx = 3\n```") == "x = 3\n"
    assert extract_code("x = 4") == "x = 4"


def fenced(code):
    return [{"role": "assistant", "content": f"Here you go:\n```python\n{code}\n```"}]


def test_code_execution_reward_batch_reasons_and_log_extra():
    logged = {}
    reward = code_execution_reward(timeout=2.0, max_workers=2)
    completions = [
        fenced("def sq(x):\n    return x * x"),
        fenced("def sq(x):\n    return x + x"),
        "def sq(x): return x**2",
        fenced("import os\nos.fork()"),
    ]
    tests = ["assert sq(3) == 9", ["assert sq(3) == 9", "assert sq(4) == 16"], "", "assert sq(3) == 9"]
    rewards = reward(prompts=["p"] * 4, completions=completions, tests=tests,
                     log_extra=lambda column, values: logged.update({column: values}))
    assert rewards == [1.0, 0.0, None, 0.0]
    assert reward.last_reasons[:3] == ["passed", "failed: AssertionError", "no tests"]
    assert reward.last_reasons[3].startswith(("crashed: 1 (PermissionError", "crashed: 1 (BlockingIOError"))
    assert logged == {"code_reason": reward.last_reasons}
    assert reward.__name__ == "code_execution_reward" and reward.isolation == "os"


def test_code_execution_reward_runs_in_parallel():
    reward = code_execution_reward(max_workers=4)
    start = time.monotonic()
    rewards = reward(prompts=["p"] * 4, completions=["import time\ntime.sleep(1.0)"] * 4, tests=["pass"] * 4)
    elapsed = time.monotonic() - start
    assert rewards == [1.0] * 4
    assert elapsed < 3.0  # run one after another they would take >= 4 s


def test_code_execution_reward_time_budget():
    reward = code_execution_reward(timeout=10.0, max_workers=1, time_budget=1.5)
    start = time.monotonic()
    rewards = reward(prompts=["p"] * 3, completions=["x = 1", "while True:\n    pass", "x = 1"], tests=["pass"] * 3)
    elapsed = time.monotonic() - start
    assert rewards == [1.0, 0.0, 0.0]
    assert reward.last_reasons == ["passed", "time budget", "time budget"]
    assert elapsed < 3.0


def test_code_execution_reward_errors():
    with pytest.raises(ValueError, match="needs the dataset column 'tests'"):
        code_execution_reward()(prompts=["p"], completions=["x = 1"], solution=["1"])
    with pytest.raises(TypeError, match="sample index 0 must be a string"):
        code_execution_reward()(prompts=["p"], completions=["x = 1"], tests=[3])
    with pytest.raises(ValueError, match="language 'rust'.*python"):
        code_execution_reward(language="rust")
    with pytest.raises(ValueError, match="isolation must be one of"):
        code_execution_reward(isolation="vm")
    with pytest.raises(ValueError, match="timeout"):
        run_in_sandbox("x = 1", timeout=0)
    with pytest.raises(ValueError, match="disk_mb"):
        run_in_sandbox("x = 1", disk_mb=0)
