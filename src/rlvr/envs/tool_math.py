"""Tool-integrated math: the policy runs Python (ToRA) or a calculator between steps of reasoning.

``tool_math`` (ToRA, Gou et al., arXiv 2309.17452): the policy writes a fenced ```python block and
ends its turn with ```output (a stop string) or the end of its message; the block runs in rlvr's
code sandbox (:mod:`rlvr.rewards.sandbox`: a subprocess with time, memory and output limits, no
network, a read-only filesystem) and what it prints comes back as an ```output block. Each block
runs on its own (names do not carry over between blocks). A turn with no code block is the final
answer: its last ``\\boxed{}`` is graded against the problem's answer with the math grader, and
the episode ends. Errors, timeouts, output floods and blocked operations come back as the
observation (cut to ``max_output_chars``); the episode goes on.

``calculator``: the light variant. A turn that ends with ``=`` asks for the value of the
arithmetic expression before it on the same line (numbers, ``+ - * /``, parentheses), which comes
back as the observation, bare (``17+25=`` gets ``42``); any other turn is the final answer, graded like ``tool_math``'s (the
answer anywhere: ``\\boxed{}``, ``<answer>`` tags or the last number).
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from rlvr.envs.base import ENVS, Environment, Messages, StepResult
from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem

TORA_INSTRUCTION = (
    "Solve the problem with Python where it helps. Write code in a ```python block and end it with "
    "```output; its output will follow. Put the final answer within \\boxed{}."
)
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut (keeps the start and the end)."""
    if len(text) <= limit:
        return text
    half = max(0, (limit - 20) // 2)
    return f"{text[:half]}\n... [cut {len(text) - 2 * half} chars] ...\n{text[len(text) - half :]}"


def _grade(action: str, answer: Any, timeout_s: float, fallback: str = "none") -> bool:
    from rlvr.rewards.math import grade_completions

    grades = grade_completions([action], [answer], timeout_s=timeout_s, fallback=fallback)
    return grades.outcomes[0] == "correct"


class _Graded(Environment):
    """The final-answer step both tool environments share."""

    grade_timeout_s = 5.0
    fallback = "none"

    def __init__(self, max_tool_calls: int) -> None:
        if not isinstance(max_tool_calls, int) or max_tool_calls < 0:
            raise ConfigError(f"{self.name}: max_tool_calls must be an integer >= 0, got {max_tool_calls!r}")
        self.max_tool_calls = max_tool_calls
        self.problem: Problem | None = None
        self.calls = 0

    def _final(self, action: str) -> StepResult:
        assert self.problem is not None, "step() before reset()"
        correct = _grade(action, self.problem.answer, self.grade_timeout_s, self.fallback)
        return StepResult("", 1.0 if correct else 0.0, True, False, {"correct": correct})

    def _tool_result(self, observation: str, **info: Any) -> StepResult:
        self.calls += 1
        over = self.calls > self.max_tool_calls  # a call past the limit ends the episode
        return StepResult(observation, 0.0, False, over, {"tool_call": True, "correct": False, **info})


@ENVS.register("tool_math")
class ToolMathEnv(_Graded):
    name = "tool_math"
    stop_strings = ("```output",)
    observation_role = "tool"

    def __init__(
        self,
        max_tool_calls: int = 4,
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        max_output_chars: int = 512,
        instruction: str | None = TORA_INSTRUCTION,
    ) -> None:
        from rlvr.rewards.sandbox import SandboxConfig

        super().__init__(max_tool_calls)
        if not isinstance(max_output_chars, int) or max_output_chars < 32:
            raise ConfigError(
                f"tool_math: max_output_chars must be an integer >= 32, got {max_output_chars!r}"
            )
        self.sandbox = SandboxConfig(
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            max_output_bytes=64 * max_output_chars,
            output_tail_chars=4 * max_output_chars,
        )
        self.max_output_chars, self.instruction = max_output_chars, instruction

    def reset(self, problem: Problem, seed: int) -> Messages:
        self.problem, self.calls = problem, 0
        messages: Messages = [{"role": "system", "content": self.instruction}] if self.instruction else []
        return messages + [{"role": "user", "content": problem.question}]

    def step(self, action: str) -> StepResult:
        from rlvr.rewards.sandbox import run_program

        blocks = _PYTHON_BLOCK.findall(action)
        if not blocks:
            return self._final(action)
        result = run_program(blocks[-1], (), self.sandbox)
        error = result.status != "ok" or bool(result.blocked)
        text = result.output
        if result.blocked:
            text = f"{text}\nblocked: {', '.join(result.blocked)}".strip()
        elif result.status == "timeout":
            text = f"{text}\ntimeout after {self.sandbox.timeout_s:g} s".strip()
        elif result.status == "output_limit":
            text = f"{text}\noutput limit reached".strip()
        elif error and result.detail and result.detail not in text:
            text = f"{text}\n{result.detail}".strip()
        opening = "" if action.rstrip().endswith("```output") else "```output"
        body = cut(text, self.max_output_chars)
        return self._tool_result(
            f"{opening}\n{body}\n```\n",
            tool_error=error,
            timeout=result.status == "timeout",
            status=result.status,
        )


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * /, parentheses, unary minus), as text.

    >>> calculate("12*(3+4)")
    '84'
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    if len(expression) > 200:
        raise ValueError("too long")
    result = value(ast.parse(expression.strip(), mode="eval").body)
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return f"{result:.6g}" if isinstance(result, float) else str(result)


@ENVS.register("calculator")
class CalculatorEnv(_Graded):
    name = "calculator"
    stop_strings = ("=",)
    observation_role = "tool"
    fallback = "last_number"

    def __init__(self, max_tool_calls: int = 4, instruction: str | None = None) -> None:
        super().__init__(max_tool_calls)
        self.instruction = instruction

    def reset(self, problem: Problem, seed: int) -> str | Messages:
        self.problem, self.calls = problem, 0
        if self.instruction:
            return [
                {"role": "system", "content": self.instruction},
                {"role": "user", "content": problem.question},
            ]
        return problem.question

    def step(self, action: str) -> StepResult:
        if not action.endswith("="):
            return self._final(action)
        line = action[:-1].rsplit("\n", 1)[-1]
        expression = re.split(r"[^0-9+\-*/(). ]", line)[-1]
        try:
            return self._tool_result(calculate(expression))
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, RecursionError):
            return self._tool_result("error", tool_error=True)
