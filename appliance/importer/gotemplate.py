"""A parser for Go's text/template grammar, enough to translate templates faithfully.

Covers what Go's parse package accepts in practice: text and actions with trim markers
(`{{- ` / ` -}}`), comments, pipelines with `|` and declarations (`$x :=`, `$i, $e :=`,
`$x =`), fields (`.a.b`, `$v.a`, `$`, `(pipeline).a`), functions with arguments, string
(quoted and raw), number, bool and nil literals, and the control actions if / else /
else if / range / with / define / template / block / break / continue / end.
Errors carry the line of the template, like Go's own `template: name:line: ...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_DEPTH = 100  # nesting of blocks and parentheses: input is a file from a commit


class GoTemplateError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


# --- AST --------------------------------------------------------------------------------


@dataclass
class Field:
    """`.a.b` (base None: the dot), `$v.a` (base '$v'), `$` (base '$', no names)."""

    base: str | None
    names: list[str]


@dataclass
class Literal:
    value: object  # str, int, float, bool or None


@dataclass
class Ident:
    """A function name: `index`, `eq`, `Checkpoint`, ..."""

    name: str


@dataclass
class Chain:
    """`(pipeline).a.b`."""

    node: Pipeline
    names: list[str]


Operand = Field | Literal | Ident | Chain


@dataclass
class Command:
    args: list[Operand]


@dataclass
class Pipeline:
    line: int
    decl: list[str] = field(default_factory=list)  # variable names with '$'
    assign: bool = False  # `$x = ...` rather than `$x := ...`
    cmds: list[Command] = field(default_factory=list)


@dataclass
class Text:
    text: str


@dataclass
class Action:
    line: int
    pipe: Pipeline
    trim_left: bool
    trim_right: bool


@dataclass
class Branch:
    """if / range / with: `body`, optional `else_body` (an `else if` is an If inside it)."""

    kind: str
    line: int
    pipe: Pipeline
    body: list[Node]
    else_body: list[Node] | None
    trim_left: bool
    trim_right: bool
    end_trim_left: bool = False
    end_trim_right: bool = False
    else_trim: tuple[bool, bool] = (False, False)
    elif_chain: bool = False  # this If was written `else if` inside its parent


@dataclass
class TemplateCall:
    line: int
    name: str
    pipe: Pipeline | None
    trim_left: bool
    trim_right: bool


@dataclass
class Control:
    """break / continue."""

    line: int
    word: str
    trim_left: bool
    trim_right: bool


Node = Text | Action | Branch | TemplateCall | Control


@dataclass
class Parsed:
    nodes: list[Node]
    defines: dict[str, tuple[int, list[Node]]]


# --- lexer ------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+))
  | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def _tokens(body: str, line: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m:
            raise GoTemplateError(line, f"unexpected {body[pos]!r} in action")
        kind = m.lastgroup or ""
        text = m.group(0)
        # A field right after a variable, ')' or field (no space) continues it: `$x.a`.
        if kind == "field" and out and out[-1][0] in ("var", "rparen") and text != "." \
                and pos > 0 and not body[pos - 1].isspace():
            out.append(("chainfield", text))
        elif kind != "ws":
            out.append((kind, text))
        pos = m.end()
    return out


def _unquote(token: str, line: int) -> str:
    if token.startswith("`"):
        return token[1:-1]
    out, i, body = [], 0, token[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise GoTemplateError(line, f"unsupported escape \\{nxt} in a string")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


# --- parser -----------------------------------------------------------------------------


class _PipeParser:
    def __init__(self, tokens: list[tuple[str, str]], line: int) -> None:
        self.toks = tokens
        self.i = 0
        self.line = line

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise GoTemplateError(self.line, "unexpected end of action")
        self.i += 1
        return tok

    def pipeline(self, depth: int = 0) -> Pipeline:
        if depth > MAX_DEPTH:
            raise GoTemplateError(self.line, "parentheses nested too deep")
        pipe = Pipeline(self.line)
        # declarations: $x := / $i, $e := / $x =
        save = self.i
        names = []
        while self.peek() and self.peek()[0] == "var":  # type: ignore[index]
            names.append(self.take()[1])
            nxt = self.peek()
            if nxt and nxt[0] == "comma":
                self.take()
                continue
            break
        nxt = self.peek()
        if names and nxt and nxt[0] in ("decl", "assign"):
            self.take()
            pipe.decl, pipe.assign = names, nxt[0] == "assign"
        else:
            self.i = save
        while True:
            pipe.cmds.append(self.command(depth))
            nxt = self.peek()
            if nxt and nxt[0] == "pipe":
                self.take()
                continue
            break
        return pipe

    def command(self, depth: int) -> Command:
        args: list[Operand] = []
        while True:
            tok = self.peek()
            if tok is None or tok[0] in ("pipe", "rparen"):
                break
            args.append(self.operand(depth))
        if not args:
            raise GoTemplateError(self.line, "missing value for command")
        return Command(args)

    def operand(self, depth: int) -> Operand:
        kind, text = self.take()
        node: Operand
        if kind == "field":
            node = Field(None, [] if text == "." else text[1:].split("."))
        elif kind == "var":
            node = Field(text, [])
        elif kind in ("string", "raw"):
            node = Literal(_unquote(text, self.line))
        elif kind == "char":
            node = Literal(ord(_unquote('"' + text[1:-1] + '"', self.line)))
        elif kind == "number":
            clean = text.replace("_", "")
            try:
                node = Literal(int(clean, 0))
            except ValueError:
                node = Literal(float(clean))
        elif kind == "ident":
            node = Literal({"true": True, "false": False, "nil": None}[text]) \
                if text in ("true", "false", "nil") else Ident(text)
        elif kind == "lparen":
            inner = self.pipeline(depth + 1)
            if self.take()[0] != "rparen":
                raise GoTemplateError(self.line, "unclosed left paren")
            node = Chain(inner, [])
        else:
            raise GoTemplateError(self.line, f"unexpected {text!r} in operand")
        while self.peek() and self.peek()[0] == "chainfield":  # type: ignore[index]
            names = self.take()[1][1:].split(".")
            if isinstance(node, Field | Chain):
                node.names.extend(names)
        return node


def _parse_pipe(body: str, line: int) -> Pipeline:
    parser = _PipeParser(_tokens(body, line), line)
    pipe = parser.pipeline()
    if parser.peek() is not None:
        raise GoTemplateError(line, f"unexpected {parser.peek()[1]!r} in action")  # type: ignore
    return pipe


@dataclass
class _Frame:
    node: Branch | None  # None: the top level or a define
    nodes: list[Node]
    define: str | None = None
    define_line: int = 0


class _TreeBuilder:
    """Actions in source order -> nested nodes; one method per kind of action."""

    def __init__(self) -> None:
        self.defines: dict[str, tuple[int, list[Node]]] = {}
        self.stack = [_Frame(None, [])]

    def add(self, node: Node) -> None:
        self.stack[-1].nodes.append(node)

    def action(self, line: int, body: str, tl: bool, tr: bool) -> None:
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise GoTemplateError(line, "unclosed comment")
            self.add(Control(line, "comment", tl, tr))
            return
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word):].strip()
        if len(self.stack) > MAX_DEPTH:
            raise GoTemplateError(line, "blocks nested too deep")
        if word in ("if", "range", "with"):
            branch = Branch(word, line, _parse_pipe(rest, line), [], None, tl, tr)
            self.add(branch)
            self.stack.append(_Frame(branch, branch.body))
        elif word == "else":
            self.else_(line, rest, tl, tr)
        elif word == "end":
            self.end(line, tl, tr)
        elif word in ("define", "block", "template"):
            self.named(word, line, rest, tl, tr)
        elif word in ("break", "continue") and not rest:
            self.add(Control(line, word, tl, tr))
        elif not body:
            raise GoTemplateError(line, "missing value for command")
        else:
            self.add(Action(line, _parse_pipe(body, line), tl, tr))

    def else_(self, line: int, rest: str, tl: bool, tr: bool) -> None:
        frame = self.stack[-1]
        if frame.node is None or frame.node.else_body is not None:
            raise GoTemplateError(line, "unexpected {{else}}")
        frame.node.else_body = []
        frame.node.else_trim = (tl, tr)
        if rest.startswith(("if ", "with ")):
            kind, cond = rest.split(None, 1)
            inner = Branch(kind, line, _parse_pipe(cond, line), [], None, tl, tr,
                           elif_chain=True)
            frame.node.else_body.append(inner)
            # `else if` shares its parent's {{end}}: both close there.
            self.stack[-1] = _Frame(frame.node, frame.node.else_body)
            self.stack.append(_Frame(inner, inner.body, define="<elif>"))
        else:
            frame.nodes = frame.node.else_body

    def end(self, line: int, tl: bool, tr: bool) -> None:
        if len(self.stack) == 1:
            raise GoTemplateError(line, "unexpected {{end}}")
        while True:
            frame = self.stack.pop()
            if frame.node is not None:
                frame.node.end_trim_left, frame.node.end_trim_right = tl, tr
            if frame.define and frame.define != "<elif>":
                self.defines[frame.define] = (frame.define_line, frame.nodes)
            if frame.define != "<elif>":
                return

    def named(self, word: str, line: int, rest: str, tl: bool, tr: bool) -> None:
        parts = _tokens(rest, line)
        if not parts or parts[0][0] not in ("string", "raw"):
            raise GoTemplateError(line, f"{word} needs a template name in quotes")
        name = _unquote(parts[0][1], line)
        arg = rest.strip()[len(parts[0][1]):].strip()
        if word in ("template", "block"):
            self.add(TemplateCall(line, name, _parse_pipe(arg, line) if arg else None, tl, tr))
        if word in ("define", "block"):
            self.stack.append(_Frame(None, [], define=name, define_line=line))

    def finish(self) -> Parsed:
        if len(self.stack) > 1:
            open_ = next((f for f in reversed(self.stack) if f.node or f.define),
                         self.stack[-1])
            what = open_.node.kind if open_.node else "define"
            line = open_.node.line if open_.node else open_.define_line
            raise GoTemplateError(line, f"unexpected EOF: {{{{{what}}}}} has no {{{{end}}}}")
        return Parsed(self.stack[0].nodes, self.defines)


def parse(source: str) -> Parsed:
    """The template's nodes and the `define`d templates it holds."""
    builder = _TreeBuilder()
    pos = 0
    for m in _ACTION.finditer(source):
        if m.start() > pos:
            builder.add(Text(source[pos:m.start()]))
        pos = m.end()
        line = source.count("\n", 0, m.start()) + 1
        builder.action(line, m.group(2).strip(), bool(m.group(1)), bool(m.group(3)))
    if pos < len(source):
        builder.add(Text(source[pos:]))
    return builder.finish()
