"""Verifier registry (by name) and loading of TRL-style reward functions ("module:function")."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from grpo_trainer.rewards.types import RewardError, VerifyResult

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


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to one bounded line, for one-line errors about user code."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:limit]


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
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"reward {path!r} is not 'module.path:function'; write it like 'my_pkg.rewards:length_penalty'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"reward {path!r}: cannot import module {module_name!r} ({e}); check the path and sys.path") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed (SyntaxError, NameError, ...)
        raise RewardError(f"reward {path!r}: importing module {module_name!r} raised {type(e).__name__}: "
                          f"{first_line(e)}; fix that module") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward {path!r}: module {module_name!r} has no attribute {attr!r}; check the function name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward {path!r}: {attr!r} is a {type(obj).__name__}, not callable; point it at a function")
    return obj
