"""Loading user functions named "module.path:function" (reward functions, tools) with one-line
errors that say what to fix. No heavy imports: the tool sandbox and the rewards both use it."""

from __future__ import annotations

import importlib
from typing import Callable


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to one bounded line, for one-line errors about user code."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:limit]


def load_callable(path: str, what: str, error: type[Exception], example: str) -> Callable:
    """Import `path` ("module.path:function", dotted attributes allowed after the colon);
    failures raise `error` with one line naming `what` ("reward", "tool") and the fix."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} {path!r} is not 'module.path:function'; write it like {example!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(f"{what} {path!r}: cannot import module {module_name!r} ({e}); check the path and sys.path") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed (SyntaxError, NameError, ...)
        raise error(f"{what} {path!r}: importing module {module_name!r} raised {type(e).__name__}: "
                    f"{first_line(e)}; fix that module") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}; check the function name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what} {path!r}: {attr!r} is a {type(obj).__name__}, not callable; point it at a function")
    return obj
