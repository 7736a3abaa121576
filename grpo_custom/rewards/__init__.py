"""Built-in reward functions (TRL signature; higher is better) and the code-execution sandbox."""
from .builtin import THINK_ANSWER_PATTERN, format_reward, length_reward, math_answer_reward
from .sandbox import SandboxResult, SandboxUnavailableError, code_execution_reward, isolation_level, run_in_sandbox

__all__ = [
    "THINK_ANSWER_PATTERN",
    "SandboxResult",
    "SandboxUnavailableError",
    "code_execution_reward",
    "format_reward",
    "isolation_level",
    "length_reward",
    "math_answer_reward",
    "run_in_sandbox",
]
