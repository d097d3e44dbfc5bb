"""The built-in tools, as run inside the sandbox child (never in the trainer): `python` executes
code, `calculator` evaluates one arithmetic expression. Standard library only.

Both accept the raw text the model wrote or a JSON object holding it ({"code": ...} or
{"expression": ...}), the form chat templates with tool support produce."""

from __future__ import annotations

import ast
import math
import operator

DESCRIPTIONS = {
    "python": (
        "Run Python 3 code (standard library only) in a fresh sandbox and return what it prints; "
        "the value of a final expression is printed too. No network, no files outside its own "
        "temporary directory, limited time and memory; nothing persists between calls.",
        "code", "Python source code to run",
    ),
    "calculator": (
        "Evaluate one arithmetic expression and return its value: numbers, + - * / // % ** "
        "(^ means power), parentheses, and sqrt, log, exp, sin, cos, tan, floor, ceil, abs, "
        "round, min, max, pi, e.",
        "expression", "the expression, for example (12 + 30) * 3 / 7",
    ),
}


def _unwrap(arguments: str, key: str) -> str:
    text = arguments.strip()
    if text.startswith("{"):
        import json

        try:
            obj = json.loads(text)
        except ValueError:
            return arguments
        if isinstance(obj, dict) and isinstance(obj.get(key), str):
            return obj[key]
    return arguments


def run_python(arguments: str) -> str:
    """Execute the code as a script; a final expression statement's value is printed, as in a
    notebook cell, since models often end with the expression they want to see."""
    code = _unwrap(arguments, "code")
    tree = ast.parse(code, "<tool>", "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<tool>", "exec"), scope)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<tool>", "eval"), scope)
        if value is not None:
            print(repr(value))
    return ""


_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitXor: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {name: getattr(math, name) for name in ("sqrt", "log", "exp", "sin", "cos", "tan", "floor", "ceil")}
_FUNCS.update(abs=abs, round=round, min=min, max=max, log10=math.log10, log2=math.log2)
_NAMES = {"pi": math.pi, "e": math.e}
MAX_RESULT_BITS = 100_000  # 2**100000 has 30,103 digits; beyond that is not arithmetic a tool needs


def _pow(base, exp):
    if isinstance(base, int) and isinstance(exp, int) and abs(base) > 1 and exp > 0:
        if exp * math.log2(abs(base)) > MAX_RESULT_BITS:
            raise ValueError(f"result too large (over {MAX_RESULT_BITS} bits)")
    return operator.pow(base, exp)


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if type(node.op) in (ast.Pow, ast.BitXor):
            return _pow(left, right)
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords):
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"not allowed in a calculator expression: {ast.unparse(node)[:80]}")


def format_number(value) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def calculator(arguments: str) -> str:
    text = _unwrap(arguments, "expression").strip().replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, "<expression>", "eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {text[:80]!r}") from None
    return format_number(_eval(tree))


TOOLS = {"python": run_python, "calculator": calculator}
