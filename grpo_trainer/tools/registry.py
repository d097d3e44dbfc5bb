"""Tools by name: the built-ins, functions registered with @register_tool, and "module:function".

A tool is resolved in the trainer only to check it and describe it (name, docstring, signature);
its function always runs in a sandbox child, which imports it again by module and name."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Callable

from grpo_trainer.tools.builtin import DESCRIPTIONS
from grpo_trainer.tools.types import ToolError
from grpo_trainer.userfn import load_callable


@dataclass(frozen=True)
class ToolSpec:
    name: str
    kind: str  # "python", "calculator" or "user"
    target: str  # "module:qualname" for a user tool, "" for a built-in
    description: dict  # OpenAI-style {"type": "function", "function": {...}}


_REGISTRY: dict[str, tuple[Callable, str | None]] = {}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", "str": "string",
               "int": "integer", "float": "number", "bool": "boolean"}


def register_tool(name: str, description: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: make `fn` a tool called `name`. It must be defined at module level (the
    sandbox child imports it by module and name). It gets the model's arguments string, or the
    keyword arguments when the model wrote a JSON object, and returns a string. The description
    defaults to the first line of its docstring."""
    if name in DESCRIPTIONS or ":" in name or not name.isidentifier():
        raise ToolError(f"register_tool({name!r}): the name must be an identifier other than "
                        f"{', '.join(DESCRIPTIONS)}; rename it")

    def decorator(fn: Callable) -> Callable:
        old = _REGISTRY.get(name)
        if old is not None and _ident(old[0]) != _ident(fn):
            raise ToolError(f"tool {name!r} is already registered by {_ident(old[0])}; pick another name")
        _REGISTRY[name] = (fn, description)
        return fn

    return decorator


def _ident(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _schema(name: str, description: str, params: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": params, "required": required}}}


def _user_spec(name: str, fn: Callable, description: str | None, shown_as: str) -> ToolSpec:
    target = _ident(fn)
    if target.startswith("__main__:") or "<locals>" in target:
        raise ToolError(f"tool {shown_as!r} ({target}) is not importable by module and name; "
                        "define it at the top level of an importable module")
    doc = (inspect.getdoc(fn) or "").strip()
    description = description or (doc.splitlines()[0] if doc else "")
    if not description:
        raise ToolError(f"tool {shown_as!r} has no description; give it a docstring or register_tool(..., description=)")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    params, required = {}, []
    for p in (sig.parameters.values() if sig else ()):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = {"type": _JSON_TYPES.get(p.annotation, "string")}
        if p.default is p.empty:
            required.append(p.name)
    return ToolSpec(name, "user", target, _schema(name, description, params, required))


def resolve_tool(name: str) -> ToolSpec:
    """A built-in name, a registered name, or "module.path:function" (its tool name is the
    function's name); a one-line ToolError otherwise."""
    if not isinstance(name, str) or not name:
        raise ToolError(f"tool name {name!r} must be a non-empty string such as 'python'")
    if name in DESCRIPTIONS:
        text, arg, arg_doc = DESCRIPTIONS[name]
        return ToolSpec(name, name, "", _schema(name, text, {arg: {"type": "string", "description": arg_doc}}, [arg]))
    if name in _REGISTRY:
        fn, description = _REGISTRY[name]
        return _user_spec(name, fn, description, name)
    if ":" in name:
        fn = load_callable(name, "tool", ToolError, "my_pkg.tools:lookup")
        for reg_name, (reg_fn, description) in _REGISTRY.items():
            if reg_fn is fn:  # registered and named by path: keep the registered name
                return _user_spec(reg_name, fn, description, name)
        return _user_spec(name.rpartition(":")[2].rpartition(".")[2], fn, None, name)
    known = sorted([*DESCRIPTIONS, *_REGISTRY])
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ToolError(f"unknown tool {name!r}{hint}; known: {', '.join(known)} "
                    "(or give a Python function as 'module.path:function')")
