"""Verifier registry (by name) and loading of TRL-style reward functions ("module:function")."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Literal

from grpo_trainer.rewards.types import RewardError, VerifyResult
from grpo_trainer.userfn import first_line, load_callable  # noqa: F401 - first_line re-exported

Kind = Literal["correctness", "format", "other"]
Verifier = Callable[..., VerifyResult]
# A fast path returns None when it cannot decide in bounded regex time; the full verifier
# then runs in the worker pool.
FastPath = Callable[..., "VerifyResult | None"]


@dataclass(frozen=True)
class VerifierEntry:
    name: str
    fn: Verifier
    kind: Kind = "other"
    fast: FastPath | None = None
    # fn itself is regex-only and linear on bounded input: safe to run in the caller's process.
    in_process: bool = False


_REGISTRY: dict[str, VerifierEntry] = {}


def register_verifier(
    name: str, *, kind: Kind = "other", fast: FastPath | None = None, in_process: bool = False
) -> Callable[[Verifier], Verifier]:
    """Decorator: register `fn(completion, ground_truth, **kwargs) -> VerifyResult` as `name`.

    kind="correctness" marks a verifier whose score says whether the answer is right (it feeds
    RewardOutput.correct and format gating); kind="format" marks a format check.
    By default the verifier runs in the reward pool (time-bounded worker processes), so it must
    be defined at module level: spawned workers import it by module and name. `in_process=True`
    (only for verifiers that are provably bounded, e.g. linear regexes on bounded input) runs it
    in the caller's process; `fast` is an in-process partial check that returns None where the
    pool has to decide."""
    if kind not in ("correctness", "format", "other"):
        raise RewardError(f"register_verifier({name!r}): kind must be correctness|format|other, got {kind!r}")
    if ":" in name:
        raise RewardError(f"register_verifier({name!r}): ':' is reserved for 'module:function' rewards; rename it")

    def decorator(fn: Verifier) -> Verifier:
        old = _REGISTRY.get(name)
        # A module imported twice (pytest rootdir modes, spawned workers) re-registers the same
        # function; only a different function under an existing name is a conflict.
        if old is not None and _ident(old.fn) != _ident(fn):
            raise RewardError(
                f"verifier {name!r} is already registered by {_ident(old.fn)}; pick another name"
            )
        _REGISTRY[name] = VerifierEntry(name, fn, kind, fast, in_process)
        return fn

    return decorator


def _ident(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def known_verifiers() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> VerifierEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, known_verifiers(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardError(
            f"unknown verifier {name!r}{hint}; known: {', '.join(known_verifiers())} "
            "(or give a reward function as 'module.path:function')"
        ) from None


def get_verifier(name: str) -> Verifier:
    """The registered verifier function called `name`; one-line error listing known names."""
    return get_entry(name).fn


def load_reward_function(path: str) -> Callable[..., list]:
    """Import a TRL-style reward function from "module.path:function"."""
    return load_callable(path, "reward", RewardError, "my_pkg.rewards:length_penalty")
