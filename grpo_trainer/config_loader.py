"""Reading a recipe: YAML (with positions in errors) plus dotted overrides, type coercion into
the dataclasses of `grpo_trainer.config`, saving, and the diff used to refuse resuming a run with a
different config. Every problem is one `ConfigError` line naming the key and what is allowed."""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml

from grpo_trainer.config import Config, ConfigError, validate


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)  # repr escapes newlines, so the message stays on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sections() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    return {f.name: [g.name for g in dataclasses.fields(hints[f.name])]
            for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _unknown_key(prefix: str, key: Any, names: Iterable[str]) -> ConfigError:
    """prefix: "" (top level), "trainer." or "reward.functions[0]."."""
    names = list(names)
    close = difflib.get_close_matches(str(key).lower(), names, n=1)
    guesses = [prefix + close[0]] if close else [  # else the right key in the wrong place: `trainer.beta`
        f"{s}.{key}" for s, keys in _sections().items() if key in keys and f"{s}." != prefix]
    hint = f" (did you mean {' or '.join(repr(g) for g in guesses)}?)" if guesses else ""
    where = f"in {prefix[:-1]}" if prefix else "at the top level"
    return ConfigError(f"unknown key {prefix + str(key)!r}{hint}; valid keys {where}: {', '.join(names)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


# A decimal number as YAML 1.2 would read it; "1e-5" included, "nan", "inf" and "1_000" not.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _whole_number(key: str, value: Any, allowed: str) -> int | None:
    """1e3 (a str to PyYAML), 1.5e3 or 1000.0 as the int they denote; None if not a number at
    all. Decimal, not float, so that a long integer written with an exponent is not rounded."""
    if isinstance(value, float):
        number = decimal.Decimal(value) if math.isfinite(value) else None
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = decimal.Decimal(value.strip())
    else:
        return None
    if number is not None and number.adjusted() > 30:  # 1e999999 would build a million-digit int
        raise ConfigError(f"{key}={_show(value)} is out of range: expected {allowed} below 1e30")
    if number is None or number != number.to_integral_value():
        raise ConfigError(f"{key}={_show(value)} is not a whole number: expected {allowed} (e.g. 1000 or 1e3)")
    return int(number)


def _coerce(key: str, value: Any, tp: Any, allowed: str | None = None) -> Any:
    """Check `value` against the annotation `tp`. Ints are accepted where floats are expected, and
    so are numeric strings, because PyYAML reads `1e-5` (no dot) as a string; int fields take
    numbers in any notation that denote a whole number (`1e3`, `1.5e3`)."""
    allowed = allowed or _type_name(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            return "no"
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}={_show(value)} is not allowed: expected {allowed}{hint}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # Optional[X]: X's own message, naming null as allowed too
            return _coerce(key, value, args[0], allowed)
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
    elif tp is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and (
                not isinstance(value, str) or _NUMBER.fullmatch(value.strip())):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float's range
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"{key}={_show(value)} is out of range: expected a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        whole = _whole_number(key, value, allowed)
        if whole is not None:
            return whole
    elif tp in (bool, str, list, dict):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    got = "null" if value is None else type(value).__name__
    raise ConfigError(f"{key}={_show(value)} has the wrong type: expected {allowed} (got {got})")


def _section_error(dotted: str, value: Any, cls: type) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    return ConfigError(f"{dotted}={_show(value)} is not a section: write it as a mapping of keys "
                       f"(e.g. {dotted}: {{{names[0]}: ...}}); valid keys in {dotted}: {', '.join(names)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(prefix, key, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise _section_error(dotted, value, tp)
            kwargs[key] = _build(tp, value or {}, dotted + ".")
        else:
            kwargs[key] = _coerce(dotted, value, tp)
    return cls(**kwargs)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}: keep one of them", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[Any, str]:
    mark, problem = getattr(exc, "problem_mark", None), str(getattr(exc, "problem", None) or exc)
    ctx, ctx_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if ctx and ctx_mark and mark and ctx_mark.line != mark.line:  # e.g. where an unclosed "[" opened
        problem += f" ({ctx} started at line {ctx_mark.line + 1}, column {ctx_mark.column + 1})"
    return mark or ctx_mark, problem


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. trainer.max_steps=3)")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.split(".")]
    if "" in parts:
        raise ConfigError(f"override {text!r} has an empty key: write section.key=value (e.g. trainer.max_steps=3)")
    return ".".join(parts), raw


def _yaml_value(raw: str) -> Any:
    return yaml.load(raw, Loader=_Loader) if raw.strip() else ""


def parse_override(text: str) -> tuple[str, Any]:
    """`trainer.max_steps=3` -> ("trainer.max_steps", 3): the value read as YAML (flow style for
    lists and mappings), or the raw text where it is not valid YAML."""
    key, raw = _split_override(text)
    try:
        return key, _yaml_value(raw)
    except yaml.YAMLError:
        return key, raw


def _accepts_str(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value


def _apply_override(tree: dict, text: str) -> None:
    """Set one dotted override in the raw recipe tree, following the dataclass schema so a wrong
    path is reported against the override rather than as a type error later."""
    key, raw = _split_override(text)
    parts = key.split(".")
    cls, node, prefix = Config, tree, ""
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(prefix, part, [f.name for f in dataclasses.fields(cls)])
        tp, dotted = hints[part], prefix + part
        if i == len(parts) - 1:
            break
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {text!r}: {dotted} is a setting ({_type_name(tp)}), not a section; "
                              f"write {dotted}=VALUE")
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):  # the recipe's own mistake, reported as such
            raise _section_error(dotted, node[part], tp)
        cls, node, prefix = tp, node[part], dotted + "."
    try:
        value = _yaml_value(raw)
    except yaml.YAMLError as exc:
        if not _accepts_str(tp):
            mark, problem = _yaml_problem(exc)
            where = f" at column {mark.column + 1}" if mark else ""
            raise ConfigError(f"override {text!r}: its value is not valid YAML{where} ({problem}); "
                              "write lists as [a, b] and mappings as {k: v}") from None
        value = raw
    if _accepts_str(tp) and value is not None and not isinstance(value, str):
        value = raw.strip()  # `data.instruction=Answer: 42` is text, not the mapping YAML reads
    if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(node.get(part), dict):
        _merge(node[part], value)  # `trainer={max_steps: 3}` updates the section, keeping the rest
    else:
        node[part] = value


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe (None: none) <- overrides, then type and range checks."""
    tree: Any = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} not found: pass an existing YAML file (see recipes/)")
        try:
            tree = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as exc:
            mark, problem = _yaml_problem(exc)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {str(path)!r} cannot be read ({exc}): pass a UTF-8 YAML file") from None
        if tree is None:  # defaults are a fine start, but an empty file is more likely a mistake
            raise ConfigError(f"recipe {str(path)!r} is empty (or only comments): pass a recipe from recipes/, "
                              "or write at least one section (e.g. trainer: {output_dir: runs/x})")
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...), "
                              f"got {_show(tree)}")
    for text in overrides or []:
        _apply_override(tree, text)
    return validate(_build(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes YAML that load_config reads back into an equal Config."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")


DEFAULT_DIFF_IGNORE = ("resume", "trainer.max_steps", "trainer.overwrite")


def config_diff(a: Config, b: Config, ignore: Iterable[str] = DEFAULT_DIFF_IGNORE) -> list[str]:
    """Dotted keys whose values differ, in field order, e.g. ["algorithm.beta",
    "reward.functions[1].weight"]; a list of another length is one key. `ignore` drops a key and
    everything under it; by default what may change on resume (resume, trainer.max_steps,
    trainer.overwrite)."""
    ignore = tuple(ignore)
    out: list[str] = []
    _diff(a.to_dict(), b.to_dict(), "", out)
    return [k for k in out if not any(k == p or k.startswith((p + ".", p + "[")) for p in ignore)]


def _diff(a: Any, b: Any, key: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            child = f"{key}.{k}" if key else str(k)
            if k in a and k in b:
                _diff(a[k], b[k], child, out)
            else:
                out.append(child)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{key}[{i}]", out)
    elif a != b or type(a) is not type(b):
        out.append(key)
