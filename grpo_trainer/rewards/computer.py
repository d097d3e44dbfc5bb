"""Reward computer: a weighted sum of verifier scores and TRL-style reward functions.

Where each kind of spec runs:
- registered verifiers marked in_process (`format`) and fast paths (`gsm8k`'s regex path) run
  here, in the caller's process: they are linear regexes on text cut to max_chars;
- every other registered verifier (`math`, user verifiers) and the part of `gsm8k` that needs
  math-verify run in the VerifierPool, bounded by timeout_s each, in parallel over the batch;
- "module:function" reward functions are called once per batch in this process with TRL's
  keyword contract, so a TRL user's function (which may hold a tokenizer or a model) works
  unchanged; the pool's time bound does not apply to them.
"""

from __future__ import annotations

import math
import pickle
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from grpo_trainer.rewards.pool import VerifierPool
from grpo_trainer.rewards.registry import VerifierEntry, first_line, get_entry, load_reward_function
from grpo_trainer.rewards.types import DEFAULT_MAX_CHARS, RewardError, RewardOutput, VerifyResult, clean_text


@dataclass(frozen=True)
class _Spec:
    label: str
    weight: float
    kwargs: dict
    entry: VerifierEntry | None  # a registered verifier ...
    func: Callable[..., Any] | None  # ... or a TRL-style batch reward function


def _parse_specs(specs: Sequence[dict]) -> list[_Spec]:
    if not specs:
        raise RewardError("no reward specs given; pass e.g. [{'name': 'gsm8k', 'weight': 1.0}]")
    out, seen = [], {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RewardError(f"reward spec #{i} is {spec!r}; write it as {{'name': str, 'weight': float, 'kwargs': dict}}")
        unknown = set(spec) - {"name", "weight", "kwargs", "label"}
        if unknown:
            raise RewardError(
                f"reward spec {spec['name']!r} has unknown keys {sorted(unknown)}; allowed: name, weight, kwargs, label"
            )
        name = spec["name"]
        weight, kwargs = spec.get("weight", 1.0), spec.get("kwargs") or {}
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardError(f"reward spec {name!r}: weight must be a finite number, got {weight!r}")
        if not isinstance(kwargs, dict):
            raise RewardError(f"reward spec {name!r}: kwargs must be a dict, got {type(kwargs).__name__}")
        base = spec.get("label") or name
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}#{seen[base]}"
        if ":" in name:
            out.append(_Spec(label, float(weight), kwargs, None, load_reward_function(name)))
        else:
            entry = get_entry(name)
            _check_entry(entry, kwargs)
            out.append(_Spec(label, float(weight), kwargs, entry, None))
    return out


def _check_entry(entry: VerifierEntry, kwargs: dict) -> None:
    # Surface a bad option (mode="strcit") now rather than as 0 scores from a worker; only our
    # one-line errors count, a user verifier may simply dislike the empty probe input.
    check = entry.fn if entry.in_process else entry.fast
    if check is not None:
        try:
            check("", "0", **kwargs)
        except RewardError:
            raise
        except Exception:  # noqa: BLE001
            pass
    if not entry.in_process:
        try:
            pickle.dumps((entry.fn, kwargs))
        except Exception as e:  # noqa: BLE001 - pickle raises several types
            raise RewardError(
                f"verifier {entry.name!r} cannot be sent to a worker process ({type(e).__name__}); "
                "define it at module level with picklable kwargs"
            ) from None


def check_reward_specs(specs: Sequence[dict], format_gated: bool = False) -> list[_Spec]:
    """Everything about `specs` that can be known before a batch: verifier names, their options,
    'module:function' imports. Starts no worker process, so it is cheap enough for a preflight."""
    parsed = _parse_specs(specs)
    kinds = [s.entry.kind for s in parsed if s.entry is not None]
    if format_gated and not {"format", "correctness"} & set(kinds):
        raise RewardError(
            "format_gated=True needs a 'format' or correctness ('gsm8k', 'math') spec; add one or drop the gate"
        )
    return parsed


class RewardComputer:
    """Scores a batch: `rc(prompts, completions, completion_ids, answers, **columns)`.

    specs: [{"name": "gsm8k" | "math" | "format" | <registered> | "module:function",
             "weight": 1.0, "kwargs": {...}, "label": optional component name}].
    format_gated=True: correctness scores count only where the format is met (the first
    `format` spec decides; without one, the correctness verifier's own `formatted` flag).
    """

    def __init__(
        self,
        specs: Sequence[dict],
        timeout_s: float = 1.0,
        max_chars: int = DEFAULT_MAX_CHARS,
        num_workers: int = 2,
        format_gated: bool = False,
        memory_mb: int = 4096,
    ):
        if max_chars <= 0:
            raise RewardError(f"max_chars must be > 0, got {max_chars}; pass a positive character budget")
        self.specs = check_reward_specs(specs, format_gated)
        self.max_chars = max_chars
        self.format_gated = format_gated
        kinds = [s.entry.kind if s.entry else "custom" for s in self.specs]
        self._correct_i = kinds.index("correctness") if "correctness" in kinds else None
        self._format_i = kinds.index("format") if "format" in kinds else self._correct_i
        pooled = [s.entry.fn for s in self.specs if s.entry is not None and not s.entry.in_process]
        # Started now so the workers' imports overlap the caller's own start-up.
        preload = [fn.__module__ for fn in pooled]
        self._pool = VerifierPool(num_workers, timeout_s, memory_mb, preload=preload) if pooled else None

    @property
    def judges_correctness(self) -> bool:
        """Whether a correctness verifier (gsm8k, math, ...) decides each sample's `correct`."""
        return self._correct_i is not None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "RewardComputer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self) -> None:
        """Block until the verifier workers have started (no-op without a pool)."""
        if self._pool is not None:
            self._pool.wait_ready()

    @property
    def pool_restarts(self) -> int:
        return self._pool.restarts if self._pool is not None else 0

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: list[list[int]] | None = None,
        answers: list[str] | None = None,
        **columns: list,
    ) -> RewardOutput:
        n = len(completions)
        for what, seq in [("prompts", prompts), ("completion_ids", completion_ids), ("answers", answers), *columns.items()]:
            if seq is not None and len(seq) != n:
                raise RewardError(f"{what} has {len(seq)} rows but there are {n} completions; pass one per completion")
        if answers is None and any(s.entry is not None for s in self.specs):
            raise RewardError("answers is required by the verifier specs; pass the ground truth per completion")

        results: dict[int, list[VerifyResult | None]] = {}
        scores: dict[int, list[float | None]] = {}
        tasks, slots = [], []
        cleaned: list[str] | None = None
        for k, spec in enumerate(self.specs):
            if spec.entry is None:
                scores[k] = self._call_custom(spec, prompts, completions, completion_ids, answers, columns)
                continue
            entry, kw = spec.entry, {"max_chars": self.max_chars, **spec.kwargs}
            row: list[VerifyResult | None] = [None] * n
            local = entry.fn if entry.in_process else entry.fast
            for i in range(n):
                r = local(completions[i], answers[i], **kw) if local is not None else None
                if r is not None:
                    row[i] = r
                    continue
                if cleaned is None:  # cut once, before pickling to a worker
                    cleaned = [clean_text(c, self.max_chars) for c in completions]
                tasks.append((entry.fn, cleaned[i], clean_text(answers[i], self.max_chars), kw))
                slots.append((k, i))
            results[k] = row
        timeouts = errors = 0
        if tasks:
            pooled, timeouts, errors = self._pool.run(tasks)
            for (k, i), r in zip(slots, pooled):
                results[k][i] = r
        for k, row in results.items():
            scores[k] = [float(r.score) for r in row]
        return self._combine(n, results, scores, timeouts, errors)

    def _call_custom(self, spec, prompts, completions, completion_ids, answers, columns) -> list[float | None]:
        kwargs = dict(columns)
        # GSM8K's own column name, so a TRL function reading kwargs["answer"] finds the truth.
        if answers is not None and "answer" not in kwargs:
            kwargs["answer"] = answers
        clash = set(spec.kwargs) & (set(kwargs) | {"prompts", "completions", "completion_ids"})
        if clash:
            raise RewardError(f"reward {spec.label!r}: kwargs {sorted(clash)} clash with batch columns; rename them")
        kwargs.update(spec.kwargs)
        try:
            out = spec.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as e:  # noqa: BLE001 - user code: name it, and where it failed, in one line
            frame = traceback.extract_tb(e.__traceback__)[-1]
            raise RewardError(
                f"reward {spec.label!r} raised {type(e).__name__}: {first_line(e)} "
                f"(at {frame.filename}:{frame.lineno}); fix the function or remove it from reward.functions"
            ) from e
        n = len(completions)
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise RewardError(f"reward {spec.label!r} returned {got} for {n} completions; return a list of {n} floats or None")
        vals: list[float | None] = []
        for v in out:
            if v is None:
                vals.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise RewardError(f"reward {spec.label!r} returned {v!r}; each value must be a float or None") from None
            # TRL writes "no opinion" as NaN too; treat it like None.
            vals.append(f if math.isfinite(f) else None)
        return vals

    def _combine(self, n, results, scores, timeouts, errors) -> RewardOutput:
        fmt = results.get(self._format_i) if self._format_i is not None else None
        formatted = [bool(r.formatted) for r in fmt] if fmt is not None else [False] * n
        rewards = [0.0] * n
        for k, spec in enumerate(self.specs):
            gated = self.format_gated and spec.entry is not None and spec.entry.kind == "correctness"
            for i, s in enumerate(scores[k]):
                if s is not None and (formatted[i] or not gated):
                    rewards[i] += spec.weight * s
        if self._correct_i is not None:
            corr = results[self._correct_i]
            correct = [r.score >= 1.0 and (formatted[i] or not self.format_gated) for i, r in enumerate(corr)]
            parsed = [r.parsed for r in corr]
        else:
            correct, parsed = [False] * n, [None] * n
        return RewardOutput(
            rewards=rewards,
            components={s.label: scores[k] for k, s in enumerate(self.specs)},
            correct=correct,
            formatted=formatted,
            parsed=parsed,
            num_timeouts=timeouts,
            num_errors=errors,
            weights={s.label: s.weight for s in self.specs},
        )


def build_reward_fn(
    specs: Sequence[dict],
    timeout_s: float = 1.0,
    max_chars: int = DEFAULT_MAX_CHARS,
    num_workers: int = 2,
    format_gated: bool = False,
    memory_mb: int = 4096,
) -> RewardComputer:
    """A RewardComputer for `specs`; close() it (or use `with`) to stop its worker processes."""
    return RewardComputer(specs, timeout_s, max_chars, num_workers, format_gated, memory_mb)
