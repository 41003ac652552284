"""kubectl's template outputs (pure): `-o jsonpath=`, `-o go-template=`, `-o custom-columns=`.

JSONPath expressions are evaluated by jsonpath-ng (its `ext` dialect has kubectl's filters,
`[?(@.type=="InternalIP")]`); kubectl's template layer around them (`{...}` blocks, text
between them, `{range}`/`{end}`, `{"\\n"}` literals, space-joined results) is here. No
maintained Python implementation of Go's text/template exists (the PyPI bindings are
unmaintained or not installable here), so go-template is a small evaluator of the part
kubectl users write: field chains, `range`/`if`/`with`/`else`/`end`, variables, pipelines,
`index`, `len`, `printf`, `print(ln)`, `eq`/`ne`/`lt`/`gt`/`and`/`or`/`not`, `{{-`/`-}}`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any, cast

import yaml
from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext import parse as jsonpath_parse


class TemplateError(ValueError):
    pass


# -- json / yaml -------------------------------------------------------------------------------
class _KubeDumper(yaml.SafeDumper):
    """Go's YAML (sigs.k8s.io/yaml) quotes with double quotes where PyYAML would use single."""

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def to_yaml(obj: object) -> str:
    """`-o yaml`: keys sorted (the API's objects are maps), lists not indented."""
    return yaml.dump(obj, Dumper=_KubeDumper, sort_keys=True, allow_unicode=True).rstrip()


def to_json(obj: object) -> str:
    """`-o json`: four spaces, keys sorted (Go's encoding/json sorts map keys)."""
    return json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=False)


# -- JSONPath ----------------------------------------------------------------------------------
def _go_value(v: object) -> str:
    """How kubectl's jsonpath prints one result."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(v)


def _expr(text: str) -> str:
    """kubectl's `.a.b\\.c[0]` -> jsonpath-ng's `$.a."b.c"[0]`."""
    text = text.strip()
    if text in ("", "@", "$"):
        return "$"
    parts, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += text[i + 1]
            i += 2
            continue
        if ch == "." and cur:
            parts.append(cur)
            cur = ""
        elif ch == "[":
            j = _closing(text, i)
            cur += text[i : j + 1]
            i = j + 1
            continue
        elif ch != "." or i == 0 or text[i - 1] == ".":
            cur += ch if ch != "." else ""
            if ch == "." and text[i - 1 : i] == ".":
                parts.append("")  # `..` recursive descent
        i += 1
    if cur:
        parts.append(cur)
    out = "$"
    for p in parts:
        if p == "":
            out += "."
            continue
        name, _, rest = p.partition("[")
        rest = "[" + rest if rest else ""
        if name and not re.fullmatch(r"[A-Za-z_*][\w]*", name):
            name = json.dumps(name)
        out += ("." + name if name else "") + rest
    return out.replace("$..", "$..").replace("...", "..")


def _closing(text: str, i: int) -> int:
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
            if depth == 0:
                return j
    raise TemplateError(f"unclosed [ in {text!r}")


def _blocks(template: str) -> list[tuple[str, str]]:
    """('text', ...) and ('expr', ...) pieces of a kubectl JSONPath template."""
    out, i = [], 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(("text", template[i:]))
            break
        if j > i:
            out.append(("text", template[i:j]))
        depth, k = 0, j
        in_str = False
        while k < len(template):
            ch = template[k]
            if ch == '"' and template[k - 1] != "\\":
                in_str = not in_str
            elif not in_str and ch == "{":
                depth += 1
            elif not in_str and ch == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if k >= len(template):
            raise TemplateError(f"unclosed action in {template!r}")
        out.append(("expr", template[j + 1 : k]))
        i = k + 1
    return out


def jsonpath(template: str, data: object) -> str:
    if not template.lstrip().startswith("{") and "{" not in template:
        template = "{" + template + "}"
    pieces = _blocks(template)
    out, _ = _run_jsonpath(pieces, 0, data, data)
    return out


def _run_jsonpath(pieces: list, i: int, cur: object, root: object) -> tuple[str, int]:
    out = []
    while i < len(pieces):
        kind, text = pieces[i]
        stripped = text.strip()
        if kind == "text":
            out.append(text)
        elif stripped == "end":
            return "".join(out), i
        elif stripped.startswith("range "):
            values = _find(stripped[6:], cur, root)
            body_end = _matching_end(pieces, i + 1)
            for v in values:
                text_out, _ = _run_jsonpath(pieces[i + 1 : body_end + 1], 0, v, root)
                out.append(text_out)
            i = body_end
        elif stripped.startswith('"') and stripped.endswith('"'):
            out.append(json.loads(stripped, strict=False))
        else:
            out.append(" ".join(_go_value(v) for v in _find(stripped, cur, root)))
        i += 1
    return "".join(out), i


def _matching_end(pieces: list, i: int) -> int:
    depth = 0
    for j in range(i, len(pieces)):
        kind, text = pieces[j]
        if kind == "expr" and text.strip().startswith("range "):
            depth += 1
        elif kind == "expr" and text.strip() == "end":
            if depth == 0:
                return j
            depth -= 1
    raise TemplateError("{range} without {end}")


def _find(expr: str, cur: object, root: object) -> list:
    expr = expr.strip()
    base = root if expr.startswith("$") else cur
    expr = expr.lstrip("$@")
    try:
        found = [m.value for m in jsonpath_parse(_expr(expr)).find(base)]
    except (JsonPathParserError, Exception) as e:
        if isinstance(e, TemplateError):
            raise
        raise TemplateError(f"error parsing jsonpath {expr!r}: {e}") from None
    if len(found) == 1 and isinstance(found[0], list) and not expr.endswith("]"):
        return found[0] if "[*]" in expr or expr.endswith("*") else found
    return found


# -- custom-columns ----------------------------------------------------------------------------
def custom_columns(spec: str, items: list[dict], headers: bool = True) -> list[list[str]]:
    columns = []
    for part in spec.split(","):
        if ":" not in part:
            raise TemplateError(f"custom-columns format {part!r}: expected HEADER:.json.path")
        head, path = part.split(":", 1)
        columns.append((head, path if path.startswith("{") else "{" + path + "}"))
    rows = [[h for h, _ in columns]] if headers else []
    for item in items:
        row = []
        for _, path in columns:
            values = []
            for kind, text in _blocks(path):
                if kind == "expr":  # printed with Go's %v, as kubectl does
                    values += [
                        v if isinstance(v, str) else _go_print(v) for v in _find(text, item, item)
                    ]
            row.append(",".join(values) if values else "<none>")
        rows.append(row)
    return rows


# -- go-template -------------------------------------------------------------------------------
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def go_template(template: str, data: object) -> str:
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            text = text.lstrip()
            tokens.pop()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim", ""))
        pos = m.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim":
        tail = tail.lstrip()
        tokens.pop()
    tokens.append(("text", tail))
    tree, _ = _parse_go(tokens, 0)
    out: list[str] = []
    _exec_go(tree, data, {"$": data}, out)
    return "".join(out)


def _keyword(action: str) -> str:
    """The action's first word; Go's lexer also ends a keyword at a dot: `{{range.items}}`."""
    m = re.match(r"(range|if|with|else|end)\b", action)
    return m.group(1) if m else (action.split(None, 1)[0] if action.strip() else "")


def _parse_go(tokens: list, i: int, stop: tuple[str, ...] = ()) -> tuple[list, int]:
    nodes: list = []
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "text":
            if text:
                nodes.append(("text", text))
            i += 1
            continue
        word = _keyword(text)
        if word in stop:
            return nodes, i
        if text.startswith("/*"):
            i += 1
            continue
        if word in ("range", "if", "with"):
            body, i = _parse_go(tokens, i + 1, ("end", "else"))
            other: list = []
            if _keyword(tokens[i][1]) == "else":
                rest = tokens[i][1][4:].strip()
                if rest.startswith("if "):  # `else if` chains as a nested if
                    tokens[i] = ("action", rest)
                    inner, i = _parse_go(tokens, i, ("end",))
                    other = inner
                    nodes.append((word, text[len(word) :].strip(), body, other))
                    i += 1
                    continue
                other, i = _parse_go(tokens, i + 1, ("end",))
            nodes.append((word, text[len(word) :].strip(), body, other))
            i += 1  # the {{end}}
            continue
        if word == "end":
            raise TemplateError("unexpected {{end}}")
        nodes.append(("expr", text))
        i += 1
    if stop:
        raise TemplateError("missing {{end}}")
    return nodes, i


def _truthy(v: object) -> bool:
    return bool(v) if v is not None else False


def _exec_go(nodes: list, dot: object, env: dict, out: list) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            text = node[1]
            m = re.match(r"^(\$\w+)\s*:?=\s*(.*)$", text, re.S)
            if m:
                env[m.group(1)] = _pipeline(m.group(2), dot, env)
                continue
            out.append(_go_print(_pipeline(text, dot, env)))
        else:
            _, arg, body, other = node
            names = []
            m = re.match(r"^(\$\w+)\s*(?:,\s*(\$\w+))?\s*:=\s*(.*)$", arg, re.S)
            if m:
                names = [n for n in m.groups()[:2] if n]
                arg = m.group(3)
            value = _pipeline(arg, dot, env)
            if kind == "if":
                _exec_go(body if _truthy(value) else other, dot, env, out)
            elif kind == "with":
                _exec_go(body if _truthy(value) else other, value if _truthy(value) else dot,
                         env, out)  # fmt: skip
            else:
                seq = (sorted(value.items()) if isinstance(value, dict)
                       else list(enumerate(cast(Iterable[Any], value or []))))  # fmt: skip
                if not seq:
                    _exec_go(other, dot, env, out)
                for k, v in seq:
                    if len(names) == 2:
                        env[names[0]], env[names[1]] = k, v
                    elif names:
                        env[names[0]] = v
                    _exec_go(body, v, env, out)


def _go_print(v: object) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_print(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_go_print(x) for x in v) + "]"
    return str(v)


def _pipeline(text: str, dot: object, env: dict) -> object:
    value: object = None
    first = True
    for stage in _split_pipes(text):
        args = _tokens(stage)
        if not first:
            args.append(("value", value))
        value = _call(args, dot, env)
        first = False
    return value


def _split_pipes(text: str) -> list[str]:
    out, cur, quote, depth = [], "", None, 0
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
            cur += ch
        elif ch == "(":
            depth += 1
            cur += ch
        elif ch == ")":
            depth -= 1
            cur += ch
        elif ch == "|" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out]


def _tokens(stage: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    lexer = shlex.shlex(stage, posix=False, punctuation_chars="()")
    lexer.whitespace_split = True
    lexer.wordchars += ".$-:/%"
    raw = list(lexer)
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok == "(":
            depth, j = 1, i + 1
            while j < len(raw) and depth:
                depth += raw[j] == "("
                depth -= raw[j] == ")"
                j += 1
            out.append(("sub", " ".join(raw[i + 1 : j - 1])))
            i = j
            continue
        out.append(("tok", tok))
        i += 1
    return out


def _field(value: object, path: str) -> object:
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _operand(tok: tuple[str, object], dot: object, env: dict) -> object:
    kind, text = tok
    if kind == "value":
        return text
    if kind == "sub":
        return _pipeline(str(text), dot, env)
    s = str(text)
    if s.startswith(('"', "`")):
        return json.loads(s) if s.startswith('"') else s[1:-1]
    if s.startswith("'"):
        return s[1:-1]
    if s == ".":
        return dot
    if s.startswith("."):
        return _field(dot, s)
    if s.startswith("$"):
        name, _, rest = s.partition(".")
        if name not in env:
            raise TemplateError(f"undefined variable {name}")
        return _field(env[name], rest) if rest else env[name]
    if s in ("true", "false"):
        return s == "true"
    if s == "nil":
        return None
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return ("func", s)


def _go_printf(fmt: str, args: list) -> str:
    fmt = re.sub(r"%v", "%s", fmt.replace("%q", '"%s"'))
    return fmt % tuple(_go_print(a) if isinstance(a, dict | list | bool) else a for a in args)


_FUNCS: dict[str, Callable[..., object]] = {
    "len": lambda x: len(x or []),
    "index": lambda x, *keys: _index(x, keys),
    "printf": lambda fmt, *a: _go_printf(fmt, list(a)),
    "print": lambda *a: "".join(_go_print(x) for x in a),
    "println": lambda *a: " ".join(_go_print(x) for x in a) + "\n",
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "not": lambda a: not _truthy(a),
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "base64decode": lambda s: __import__("base64").b64decode(s).decode(),
    "base64encode": lambda s: __import__("base64").b64encode(s.encode()).decode(),
}


def _index(x: object, keys: tuple) -> object:
    for k in keys:
        if isinstance(x, dict):
            x = x.get(k)
        elif isinstance(x, list) and isinstance(k, int) and -len(x) <= k < len(x):
            x = x[k]
        else:
            return None
    return x


def _call(args: list, dot: object, env: dict) -> object:
    if not args:
        return None
    head = _operand(args[0], dot, env)
    if isinstance(head, tuple) and head and head[0] == "func":
        fn = _FUNCS.get(head[1])
        if fn is None:
            raise TemplateError(f'function "{head[1]}" not defined')
        return fn(*[_operand(a, dot, env) for a in args[1:]])
    if len(args) > 1:
        raise TemplateError(f"can't give argument to non-function {args[0][1]}")
    return head
