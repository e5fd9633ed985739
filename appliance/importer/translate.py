"""Go text/template (as the original Vaquero rendered it) -> Jinja2 (as this project does).

The original's template data was its SoT objects with a few substitutions (`.env.agentURL`,
`.boot.configURL`, `md` for `metadata`, subnet ids replaced by subnets, the `Checkpoint`
function). Each is mapped to this project's render context (docs/sot.md): `site`, `host`,
`interface`, `interfaces`, `boot`, `os`, `urls`. The translation keeps whitespace exactly
(Go's and Jinja's trim markers mean the same thing) so a template renders the same bytes.

What cannot be translated faithfully is not guessed: it becomes a TODO with its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .gotemplate import (
    Action,
    Branch,
    Chain,
    Command,
    Control,
    Ident,
    Literal,
    Node,
    Operand,
    Parsed,
    Pipeline,
    TemplateCall,
    Text,
)

# Kinds of values the translator tracks, to map Go field names to this project's names.
ROOT, ENV, HOST, IFACE, IFACES, BOOT, OS, SUBNET, MAP, ANY = (
    "root", "env", "host", "interface", "interfaces", "boot", "os", "subnet", "map", "any")

_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    # kind -> Go field -> (Jinja access, resulting kind). "{}" is the object's expression.
    ROOT: {"env": ("site", ENV), "host": ("host", HOST), "interface": ("interface", IFACE),
           "boot": ("boot", BOOT)},
    ENV: {"md": ("{}.metadata", MAP), "metadata": ("{}.metadata", MAP),
          "agentURL": ("urls.base", ANY), "assetURL": ("urls.base", ANY),
          "id": ("{}.id", ANY), "name": ("{}.name", ANY), "subnets": ("{}.subnets", ANY)},
    HOST: {"md": ("{}.metadata", MAP), "metadata": ("{}.metadata", MAP),
           "name": ("{}.name", ANY), "interfaces": ("interfaces", IFACES),
           "workflow": ("{}.workflow", ANY), "never_provision": ("{}.never_provision", ANY)},
    IFACE: {"mac": ("{}.mac", ANY), "ipv4": ("{}.ipv4", ANY), "hostname": ("{}.hostname", ANY),
            "identifier": ("{}.identifier", ANY), "type": ("{}.type", ANY),
            "subnet": ("{}.subnet", SUBNET), "ignore_dhcp": ("{}.ignore_dhcp", ANY)},
    SUBNET: {"id": ("{}.id", ANY), "cidr": ("{}.cidr", ANY), "gateway": ("{}.gateway", ANY),
             "dns": ("{}.dns", ANY), "ntp": ("{}.ntp", ANY), "domain": ("{}.domain", ANY),
             "domain_name": ("{}.domain", ANY), "vlan": ("{}.vlan", ANY),
             "netmask": ("{}.cidr.netmask", ANY), "md": ("{}.metadata", MAP),
             "metadata": ("{}.metadata", MAP)},
    BOOT: {"md": ("{}.metadata", MAP), "metadata": ("{}.metadata", MAP),
           "id": ("{}.id", ANY), "name": ("{}.name", ANY), "os": ("os", OS),
           "operating_system": ("os", OS), "configURL": ("urls.config", ANY)},
    OS: {"id": ("{}.id", ANY), "name": ("{}.name", ANY), "major_version": ("{}.major_version", ANY),
         "minor_version": ("{}.minor_version", ANY), "os_family": ("{}.os_family", ANY),
         "release_name": ("{}.release_name", ANY)},
}
_DICT_ATTRIBUTES = set(dir(dict)) | set(dir(list))
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_JINJA_RESERVED = {"site", "env", "host", "cluster", "interface", "interfaces", "boot", "os",
                   "workflow", "stage", "revision", "urls", "loop", "true", "false", "none",
                   "and", "or", "not", "in", "is", "if", "else", "for", "range", "dict"}


@dataclass
class Issue:
    """Something a person must decide; `line` is in the original template."""

    line: int
    kind: str
    message: str
    key: str | None = None


@dataclass
class _Expr:
    text: str
    kind: str


@dataclass
class _Scope:
    dot: _Expr
    variables: dict[str, _Expr]


@dataclass
class Translation:
    text: str
    issues: list[Issue] = field(default_factory=list)


class Translator:
    """One template (or one `define`) at a time; `snippet_path` names where defines go."""

    def __init__(self, snippet_path: str = "snippets") -> None:
        self.snippet_path = snippet_path
        self.issues: list[Issue] = []
        self._counter = 0

    def issue(self, line: int, kind: str, message: str, key: str | None = None) -> None:
        """One issue per line and message (and per line and key: a missing key used twice
        on a line is one thing to fix)."""
        for i in self.issues:
            if i.line == line and (i.message == message or (key and i.key == key)):
                return
        self.issues.append(Issue(line, kind, message, key))

    def translate(self, parsed: Parsed | list[Node]) -> Translation:
        nodes = parsed.nodes if isinstance(parsed, Parsed) else parsed
        root = _Expr("", ROOT)
        text = self._nodes(nodes, _Scope(root, {"$": root}))
        return Translation(text, self.issues)

    # --- nodes ----------------------------------------------------------------------

    def _nodes(self, nodes: list[Node], scope: _Scope) -> str:
        return "".join(self._node(n, scope) for n in nodes)

    def _node(self, node: Node, scope: _Scope) -> str:
        if isinstance(node, Text):
            return _text(node.text)
        if isinstance(node, Action):
            return self._action(node, scope)
        if isinstance(node, Branch):
            return self._branch(node, scope)
        if isinstance(node, TemplateCall):
            return self._template_call(node, scope)
        assert isinstance(node, Control)
        if node.word == "comment":
            return _tag("#", "", node.trim_left, node.trim_right, close="#")
        return _tag("%", node.word, node.trim_left, node.trim_right)

    def _action(self, node: Action, scope: _Scope) -> str:
        pipe = node.pipe
        if pipe.decl:
            value = self._pipeline(pipe, scope)
            if pipe.assign:
                self.issue(node.line, "template", f"`{pipe.decl[0]} = ...` changes a variable "
                           "of an outer scope; Jinja cannot, rewrite this by hand")
            name = self._declare(pipe.decl[0], value, scope)
            return _tag("%", f"set {name} = {value.text}", node.trim_left, node.trim_right)
        value = self._pipeline(pipe, scope)
        return _tag("{", value.text, node.trim_left, node.trim_right, close="}")

    def _branch(self, node: Branch, scope: _Scope) -> str:
        inner = _Scope(scope.dot, dict(scope.variables))
        tl, tr = node.trim_left, node.trim_right
        if node.kind == "if":
            cond = self._pipeline(node.pipe, scope, condition=True)
            word = "elif" if node.elif_chain else "if"
            out = _tag("%", f"{word} {cond.text}", tl, tr) + self._nodes(node.body, inner)
            out += self._else(node, scope, "endif")
            return out
        if node.kind == "range":
            seq = self._pipeline(Pipeline(node.pipe.line, cmds=node.pipe.cmds), scope)
            elem_kind = IFACE if seq.kind == IFACES else ANY
            if len(node.pipe.decl) == 2:
                index_var, elem_var = node.pipe.decl
            elif len(node.pipe.decl) == 1:
                index_var, elem_var = None, node.pipe.decl[0]
            else:
                index_var, elem_var = None, None
            target = self._fresh("item")
            element = _Expr(target, elem_kind)
            inner.dot = element
            if elem_var:
                inner.variables[elem_var] = element
            if index_var:
                inner.variables[index_var] = _Expr("loop.index0", ANY)
            if seq.kind == MAP:
                self.issue(node.line, "template", "range over a map iterates its sorted keys "
                           "in Go; check the translation (`| dictsort`) if this is a map")
            out = _tag("%", f"for {target} in {seq.text}", tl, tr) + self._nodes(node.body, inner)
            out += self._else(node, scope, "endfor")
            return out
        # with: the dot becomes the value, only when it is not empty
        value = self._pipeline(Pipeline(node.pipe.line, cmds=node.pipe.cmds), scope)
        name = self._fresh("dot")
        bound = _Expr(name, value.kind)
        inner.dot = bound
        for var in node.pipe.decl:
            inner.variables[var] = bound
        out = (_tag("%", f"with {name} = {value.text}", tl, False) + _tag("%", f"if {name}",
                                                                         False, tr))
        out += self._nodes(node.body, inner)
        if node.else_body is not None:
            etl, etr = node.else_trim
            out += _tag("%", "else", etl, etr) + self._nodes(node.else_body, scope)
        out += _tag("%", "endif", node.end_trim_left, False)
        out += _tag("%", "endwith", False, node.end_trim_right)
        return out

    def _else(self, node: Branch, scope: _Scope, end: str) -> str:
        out = ""
        if node.else_body is not None:
            body = node.else_body
            if body and isinstance(body[0], Branch) and body[0].elif_chain \
                    and body[0].kind == "if" and node.kind == "if":
                chained = body[0]
                out += self._branch(chained, scope)[:-len(_tag("%", "endif",
                                                              chained.end_trim_left,
                                                              chained.end_trim_right))]
                return out + _tag("%", end, node.end_trim_left, node.end_trim_right)
            etl, etr = node.else_trim
            out += _tag("%", "else", etl, etr) + self._nodes(body, scope)
        return out + _tag("%", end, node.end_trim_left, node.end_trim_right)

    def _template_call(self, node: TemplateCall, scope: _Scope) -> str:
        arg = self._pipeline(node.pipe, scope) if node.pipe else None
        include = f'include "{self.snippet_path}/{node.name}"'
        if arg is None or (arg.kind == ROOT and arg.text == ""):
            return _tag("%", include, node.trim_left, node.trim_right)
        self.issue(node.line, "template", f"template {node.name!r} is called with "
                   f"{arg.text} as its dot; the translation includes it with the whole "
                   "context instead: check its fields")
        return _tag("%", include, node.trim_left, node.trim_right)

    # --- expressions ----------------------------------------------------------------

    def _fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def _declare(self, var: str, value: _Expr, scope: _Scope) -> str:
        name = var.lstrip("$") or "root"
        if name in _JINJA_RESERVED:
            name += "_"
        scope.variables[var] = _Expr(name, value.kind)
        return name

    def _pipeline(self, pipe: Pipeline, scope: _Scope, condition: bool = False) -> _Expr:
        result: _Expr | None = None
        for cmd in pipe.cmds:
            result = self._command(cmd, scope, pipe.line, result, condition)
        assert result is not None
        return result

    def _command(self, cmd: Command, scope: _Scope, line: int, piped: _Expr | None,
                 condition: bool) -> _Expr:
        first = cmd.args[0]
        if not isinstance(first, Ident):
            if len(cmd.args) > 1 or piped is not None:
                self.issue(line, "template", "a value cannot take arguments")
            return self._operand(first, scope, line)
        args = [self._operand(a, scope, line) for a in cmd.args[1:]]
        raw = cmd.args[1:]
        if piped is not None:
            args.append(piped)
            raw = [*raw, Literal(None)]
        return self._function(first.name, args, raw, line, condition)

    def _function(self, name: str, args: list[_Expr], raw: list[Operand], line: int,
                  condition: bool) -> _Expr:
        if name == "Checkpoint":
            return _Expr("urls.phone_home", ANY)
        if name == "index":
            if not args:
                self.issue(line, "template", "index needs a value")
                return _Expr("none", ANY)
            return self._index(args[0], args[1:], raw[1:], line, condition)
        if name in _COMPARE:
            if len(args) < 2:
                self.issue(line, "template", f"{name} needs two values")
                return _Expr("false", ANY)
            if name == "eq" and len(args) > 2:  # eq a b c: a equals any of b, c
                return _Expr("(" + " or ".join(f"{args[0].text} == {b.text}"
                                               for b in args[1:]) + ")", ANY)
            return _Expr(f"({args[0].text} {_COMPARE[name]} {args[1].text})", ANY)
        if name in ("and", "or"):
            return _Expr("(" + f" {name} ".join(a.text for a in args) + ")", ANY)
        if name == "not":
            return _Expr(f"(not {args[0].text})", ANY)
        if name == "len":
            return _Expr(f"({args[0].text} | length)", ANY)
        if name in ("print", "println"):
            sep = " ~ " if name == "print" else ' ~ " " ~ '
            tail = ' ~ "\\n"' if name == "println" else ""
            return _Expr("(" + sep.join(f"({a.text} | string)" for a in args) + tail + ")", ANY)
        if name == "printf":
            fmt, rest = args[0], args[1:]
            spec = fmt.text.replace("%v", "%s").replace("%d", "%s")
            return _Expr(f"({spec} | format({', '.join(a.text for a in rest)}))", ANY)
        if name in ("urlquery",):
            return _Expr(f"({args[-1].text} | urlencode)", ANY)
        if name in ("html", "js"):
            self.issue(line, "template", f"{name} escaping has no Jinja filter here; the "
                       "value is printed unescaped")
            return args[-1] if args else _Expr('""', ANY)
        self.issue(line, "template", f"function {name!r} does not exist in this project's "
                   "templates; rewrite this action by hand")
        return _Expr('""', ANY)

    def _index(self, base: _Expr, keys: list[_Expr], raw: list[Operand], line: int,
               condition: bool) -> _Expr:
        expr = base
        for key, source in zip(keys, raw, strict=False):
            if isinstance(source, Literal) and isinstance(source.value, str):
                known = _FIELDS.get(expr.kind)
                if known is not None:
                    if source.value not in known:
                        self.issue(line, "data", f"{_describe(expr)} has no key "
                                   f"{source.value!r}: in the original `index` found nothing "
                                   "here (always empty). Did you mean its metadata?",
                                   key=source.value)
                        return _Expr("none", ANY)
                    expr = self._field(expr, source.value, line)
                    continue
                if condition and key is keys[-1]:
                    # Go's index of a missing map key is the zero value: false, not an error.
                    return _Expr(f"({key.text} in {expr.text} and {expr.text}[{key.text}])",
                                 ANY)
                expr = _Expr(f"{expr.text}[{key.text}]", ANY)
                continue
            elem = IFACE if expr.kind == IFACES else ANY
            expr = _Expr(f"{expr.text}[{key.text}]", elem)
        return expr

    def _operand(self, op: Operand, scope: _Scope, line: int) -> _Expr:
        if isinstance(op, Literal):
            return _Expr(_literal(op.value), ANY)
        if isinstance(op, Ident):
            return self._function(op.name, [], [], line, False)
        if isinstance(op, Chain):
            expr = self._pipeline(op.node, scope)
            expr = _Expr(f"({expr.text})", expr.kind)
            return self._fields(expr, op.names, line)
        if op.base is None:
            base = scope.dot
        else:
            if op.base not in scope.variables:
                self.issue(line, "template", f"variable {op.base} is not defined here")
                return _Expr("none", ANY)
            base = scope.variables[op.base]
        return self._fields(base, op.names, line)

    def _fields(self, expr: _Expr, names: list[str], line: int) -> _Expr:
        for name in names:
            expr = self._field(expr, name, line)
        if expr.kind == ROOT and expr.text == "":
            return expr
        return expr

    def _field(self, expr: _Expr, name: str, line: int) -> _Expr:
        known = _FIELDS.get(expr.kind)
        if known is None:  # metadata or unknown: a map, key by key
            if expr.text == "":
                return _Expr(name, ANY)
            if name in _DICT_ATTRIBUTES or name in _JINJA_RESERVED:
                # `m.keys` would be the dict's method in Jinja; Go meant the key
                return _Expr(f"{expr.text}[{json.dumps(name)}]", ANY)
            return _Expr(f"{expr.text}.{name}", ANY)
        if name not in known:
            self.issue(line, "data", f"{_describe(expr)} has no field {name!r} in the original "
                       "data model (it rendered nothing or failed); rewrite this by hand",
                       key=name)
            return _Expr("none", ANY)
        access, kind = known[name]
        return _Expr(access.replace("{}", expr.text), kind)


def _describe(expr: _Expr) -> str:
    return {ROOT: "the template's data", ENV: ".env", HOST: ".host", IFACE: "an interface",
            SUBNET: "a subnet", BOOT: ".boot", OS: "the OS"}.get(expr.kind, expr.text)


def _literal(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _tag(kind: str, body: str, trim_left: bool, trim_right: bool, close: str = "%") -> str:
    opener = {"%": "{%", "{": "{{", "#": "{#"}[kind]
    closer = {"%": "%}", "}": "}}", "#": "#}"}[close]
    left = "-" if trim_left else ""
    right = "-" if trim_right else ""
    return f"{opener}{left} {body} {right}{closer}" if body else f"{opener}{left}{right}{closer}"


def _text(text: str) -> str:
    """Literal text, protected from Jinja where it holds Jinja's delimiters (`{#` in shell)."""
    if "{{" in text or "{%" in text or "{#" in text:
        return "{% raw %}" + text + "{% endraw %}"
    return text
