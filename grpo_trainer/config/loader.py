"""Reading a recipe: YAML (with positions in errors) plus dotted overrides, built into the
dataclasses of schema.py and checked by checks.py; saving, and the diff used to refuse resuming a
run with a different config. Every problem is one `ConfigError` line naming the key and what is
allowed. Overrides are merged into the recipe key by key; their values are YAML (`3` -> int,
`null` -> None, `[{name: gsm8k}]` -> list)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from grpo_trainer.config.checks import coerce, show, type_name, unknown_key, validate
from grpo_trainer.config.schema import Config, ConfigError


def _section_error(dotted: str, value: Any, cls: type) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    return ConfigError(f"{dotted}={show(value)} is not a section: write it as a mapping of keys "
                       f"(e.g. {dotted}: {{{names[0]}: ...}}); valid keys in {dotted}: {', '.join(names)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise unknown_key(prefix, key, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise _section_error(dotted, value, tp)
            kwargs[key] = _build(tp, value or {}, dotted + ".")
        else:
            kwargs[key] = coerce(dotted, value, tp)
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
            raise unknown_key(prefix, part, [f.name for f in dataclasses.fields(cls)])
        tp, dotted = hints[part], prefix + part
        if i == len(parts) - 1:
            break
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {text!r}: {dotted} is a setting ({type_name(tp)}), not a section; "
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
                              f"got {show(tree)}")
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
