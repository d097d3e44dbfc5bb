"""Name tables for the pluggable parts of the objective: advantage estimators and policy losses.

Each is filled at import time by a decorator next to the function it names
(``@register_advantage("grpo", scale="group")``) and read-only afterwards; it is the only
module-level state in ``algo/``. Config validation (``algorithm.advantage``,
``algorithm.policy_loss``) and the dispatchers read these tables, so adding an estimator or a
loss is one decorated function plus its test: no list of names is kept anywhere else.

An entry also says which ``algorithm.*`` config keys feed which keyword of its function
(``options``), so the caller passes ``**entry.bind(settings)`` instead of special-casing names.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping


@dataclass(frozen=True)
class Entry:
    """One registered function.

    ``options``  algorithm.<config key> -> keyword of ``fn`` (e.g. softmax_beta -> beta).
    ``scale``    advantages only: the default of ``scale`` for a mean-centred estimator (it then
                 also takes ``scale`` and ``eps``); None: ``scale`` does not apply.
    ``grouped``  advantages only: needs >= 2 samples per prompt (group statistics).
    ``critic``   advantages only: per-token, from token rewards and a learned value function
                 (``fn(rewards (N, T), values (N, T), mask (N, T), **keywords) -> (adv, returns)``);
                 the trainer then trains a critic (critic.py).
    """

    name: str
    fn: Callable[..., Any]
    options: Mapping[str, str] = field(default_factory=dict)
    scale: str | None = None
    grouped: bool = True
    critic: bool = False

    def bind(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The keywords for ``fn`` from a mapping of algorithm.* values (e.g. ``vars(cfg.algorithm)``)."""
        return {kw: settings[key] for key, kw in self.options.items()}

    def keyword(self, name: str) -> str:
        """A keyword given to a dispatcher, by config key or by ``fn``'s own name -> ``fn``'s name."""
        if name in self.options:
            return self.options[name]
        if name in self.options.values():
            return name
        takes = ", ".join(sorted(set(self.options) | set(self.options.values()))) or "none"
        raise ValueError(f"{name}= does not apply to {self.name!r}; it takes: {takes}")


class Registry(Mapping[str, Entry]):
    """Registration order is kept: it is the order names are listed in errors."""

    def __init__(self, what: str):
        self.what = what  # "advantage estimator", in messages
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} is registered twice; pick another name")
        self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        """For tests that register a toy entry."""
        del self._entries[name]

    def entry(self, name: str) -> Entry:
        """The entry, or one ValueError line listing the registered names."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.what} {name!r}{hint}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


ADVANTAGES = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")


def register_advantage(name: str, *, scale: str | None = None, grouped: bool = True, critic: bool = False,
                       options: Mapping[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(rewards (N,), group_size, **keywords) -> (N,)`` as ``name``.

    ``scale``: the default scale of a mean-centred estimator, which then gets ``scale=`` and
    ``eps=``; leave None when scaling does not apply. ``grouped=False``: works with one sample
    per prompt. ``critic=True``: a per-token estimator over a learned value function (see Entry).
    ``options``: algorithm.<config key> -> keyword of fn.
    """
    def decorate(fn: Callable) -> Callable:
        ADVANTAGES.add(Entry(name, fn, dict(options or {}), scale, grouped, critic))
        return fn
    return decorate


def register_policy_loss(name: str, *, options: Mapping[str, str] | None = None
                         ) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(logp, old_logp, advantages, mask, **keywords) -> (per_token (N, T),
    stats)`` as ``name``; ``options``: algorithm.<config key> -> keyword of fn. ``stats`` holds
    ``clip_frac_low`` / ``clip_frac_high`` (0-dim) and, optionally, ``clipped`` ((N, T) bool: the
    tokens they count, marked in the sample log)."""
    def decorate(fn: Callable) -> Callable:
        POLICY_LOSSES.add(Entry(name, fn, dict(options or {})))
        return fn
    return decorate
