"""Multi-turn tool use behind the rollout interface: token in, token out.

Turn 1 samples G completions per prompt that stop at a tool call's closing marker (the format's
stop string). Every trajectory whose turn ended in a call has it parsed (a malformed call gets an
error string as its result), all of this turn's calls run in one `ToolSet.run_many` batch, and
each result is appended as token ids: the end of the assistant's turn, the tool message and the
next assistant header, exactly as the chat template renders them (`ToolMessage`). The next turn
is ONE engine call over every trajectory still going (n=1 each), continuing from the exact ids so
far (prompt + every sampled id + every tool id): earlier turns are never decoded and re-encoded,
so the ids the trainer sees are the engine's and the tools', in order.

A trajectory ends at EOS, at `max_turns` generation turns (a call in the last turn is not run),
or at the length limit, which counts every completion token, the tools' included: `truncated`
says the limit ended it (the engine stopped at it, or a tool result left no room to generate).

Tool-result tokens are marked in `RolloutBatch.tool_mask` (the record's loss mask is 0 there) and
carry log-prob 0. Each turn's draw is seeded from (the call's seed, turn), so the same weights,
prompts and seed give the same transcripts (exact resume); vLLM's CPU sampler cannot take
per-request seeds (see vllm_engine.py), so the seed is per turn, not per trajectory.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import torch

from .base import RolloutBatch, RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)

_PYTHON_BLOCK = re.compile(r"```python[ \t]*\n(.*?)\n```", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes a tool call: the string that closes one (generation stops there) and
    the parser of a turn's text into (tool name, arguments JSON) or an error string."""

    stop: tuple[str, ...]
    parse: Callable[[str], "tuple[str, str] | str"]
    example: str


def _parse_python_block(text: str) -> tuple[str, str] | str:
    blocks = _PYTHON_BLOCK.findall(text)
    if not blocks:
        return "error: malformed tool call: write the code as ```python\\n<code>\\n``` on lines of their own"
    return "python", blocks[-1]  # the python tool takes the code as it is


def _parse_tool_call(text: str) -> tuple[str, str] | str:
    found = _TOOL_CALL.findall(text)
    expected = 'expected <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'
    if not found:
        return f"error: malformed tool call: {expected}"
    try:
        call = json.loads(found[-1])
    except ValueError as e:
        return f"error: malformed tool call, not JSON ({e}): {expected}"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return f"error: malformed tool call, no \"name\": {expected}"
    args = call.get("arguments", {})
    if not isinstance(args, (dict, str)):
        return f"error: malformed tool call, \"arguments\" must be an object: {expected}"
    return call["name"], args if isinstance(args, str) else json.dumps(args)


FORMATS = {
    # ```python\n<code>\n```: the closing fence is a line of its own, so "\n```\n" (which the opening
    # "```python\n" never contains) ends the turn.
    "python_block": ToolFormat(("\n```\n",), _parse_python_block, "```python\nprint(12 * 7)\n```"),
    "tool_call": ToolFormat(("</tool_call>",), _parse_tool_call,
                            '<tool_call>{"name": "python", "arguments": {"code": "print(12 * 7)"}}</tool_call>'),
}

_ASSISTANT_MARK, _RESULT_MARK = "ASSISTANT7f3aMARK", "RESULT7f3aMARK"


class ToolMessage:
    """A tool result as token ids, the way the tokenizer's chat template renders a tool message
    after an assistant turn, up to the next assistant header: the template is rendered once with
    marker strings and cut at the end of the assistant's content and around the result. Templates
    without a tool role (rendering raises, or drops the result) get the same rendering with the
    "user" role instead; `role` says which. The result body is tokenised on its own (special-token
    text in tool output stays plain text) and cut to `max_tokens`."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        for role in ("tool", "user"):
            parts = _template_parts(tokenizer, role)
            if parts is not None:
                break
        else:
            raise ValueError("the tokenizer's chat template renders neither a tool nor a user message after an "
                             "assistant turn; multi-turn tool use needs one of them")
        self.role = role
        if role != "tool":
            log.warning("the chat template has no tool role: tool results are rendered as user messages")
        before, after = parts
        self.before_ids = tokenizer.encode(before, add_special_tokens=False)
        self.after_ids = tokenizer.encode(after, add_special_tokens=False)

    def ids(self, text: str) -> list[int]:
        body = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return self.before_ids + body[:self.max_tokens] + self.after_ids


def _template_parts(tokenizer, role: str) -> tuple[str, str] | None:
    messages = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": _ASSISTANT_MARK},
                {"role": role, "content": _RESULT_MARK}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that rejects the role (jinja raise_exception)
        return None
    a, r = text.find(_ASSISTANT_MARK), text.find(_RESULT_MARK)
    if a < 0 or r < a:
        return None
    return text[a + len(_ASSISTANT_MARK):r], text[r + len(_RESULT_MARK):]


def turn_seed(seed: int, turn: int) -> int:
    return seed if turn == 0 else (seed * 1_000_003 + turn * 15_485_863) % (2**31)


@dataclass
class _Trajectory:
    prompt: list[int]
    limit: int  # completion tokens allowed in all (tool tokens count)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tool: list[bool] = field(default_factory=list)
    last_text: str = ""  # the latest turn's sampled ids, decoded (to find and parse a call; never re-encoded)
    truncated: bool = False
    turns: int = 0
    calls: int = 0
    errors: int = 0
    timeouts: int = 0

    def add_turn(self, ids: list[int], logprobs: list[float], truncated: bool, text: str) -> None:
        self.ids += ids
        self.logprobs += logprobs
        self.tool += [False] * len(ids)
        self.last_text, self.truncated, self.turns = text, truncated, self.turns + 1


class MultiTurnEngine(RolloutEngine):
    """An engine that runs tool calls between turns; `generate` returns whole trajectories in one
    RolloutBatch with their tool mask and per-row (turns, calls, errors, timeouts). `tools`: an
    object with `run_many(list[ToolCall]) -> list[ToolResult]` (grpo_trainer.tools.ToolSet)."""

    def __init__(self, engine: RolloutEngine, tools, tokenizer, tool_format: str, max_turns: int,
                 max_tool_output_tokens: int):
        self.engine, self.tools, self.tokenizer = engine, tools, tokenizer
        self.format, self.max_turns = FORMATS[tool_format], max_turns
        self.message = ToolMessage(tokenizer, max_tool_output_tokens)

    def __getattr__(self, name):  # weight_dtype, lora_request, ...: the wrapped engine's
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 max_tokens: list[int] | None = None) -> RolloutBatch:
        G = sampling.num_generations
        limits = [sampling.max_tokens] * len(prompt_ids) if max_tokens is None else list(max_tokens)
        sampling = replace(sampling, stop=self.format.stop)
        first = self.engine.generate(prompt_ids, sampling, seed, limits)
        rows = [_Trajectory(prompt=list(prompt_ids[i // G]), limit=limits[i // G])
                for i in range(len(first.completion_ids))]
        for row, ids, lp, cut in zip(rows, first.completion_ids, first.logprobs, first.truncated):
            row.add_turn(ids, lp, cut, self.tokenizer.decode(ids))
        active = rows
        for turn in range(1, self.max_turns):
            calling = [r for r in active if self._ends_in_call(r)]
            if not calling:
                break
            self._run_tools(calling)
            active = [r for r in calling if not r.truncated]
            if not active:
                break
            out = self.engine.generate([r.prompt + r.ids for r in active], replace(sampling, num_generations=1),
                                       turn_seed(seed, turn), [r.limit - len(r.ids) for r in active])
            for row, ids, lp, cut in zip(active, out.completion_ids, out.logprobs, out.truncated):
                row.add_turn(ids, lp, cut, self.tokenizer.decode(ids))
        # A call in the last allowed turn is not run (nothing would read its result) nor counted.
        return RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=[r.ids for r in rows],
                            logprobs=[r.logprobs for r in rows], truncated=[r.truncated for r in rows],
                            tool_mask=[r.tool for r in rows],
                            tool_counts=[(r.turns, r.calls, r.errors, r.timeouts) for r in rows])

    def _ends_in_call(self, r: _Trajectory) -> bool:
        # The engine stopped at a call's closing marker (EOS or the length limit end it otherwise).
        return not r.truncated and any(s in r.last_text for s in self.format.stop)

    def _run_tools(self, calling: list[_Trajectory]) -> None:
        from grpo_trainer.tools import ToolCall, ToolResult

        # A call naming a tool this run lacks is the ToolSet's to answer (an error result).
        parsed = [self.format.parse(r.last_text) for r in calling]
        results = [ToolResult(p, "error") if isinstance(p, str) else None for p in parsed]
        todo = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
        for i, res in zip(todo, self.tools.run_many([ToolCall(*parsed[i]) for i in todo]) if todo else []):
            results[i] = res
        for r, res in zip(calling, results):
            r.calls += 1
            r.errors += res.status == "error"
            r.timeouts += res.status == "timeout"
            ids = self.message.ids(res.text)
            if len(r.ids) + len(ids) >= r.limit:  # no room left to generate after the result
                r.truncated = True
                continue
            r.ids += ids
            r.logprobs += [0.0] * len(ids)
            r.tool += [True] * len(ids)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.load_weights(named_tensors)

    def sleep(self) -> None:
        self.engine.sleep()

    def close(self) -> None:
        self.tools.close()
        self.engine.close()
