"""Every syntax error of every template, found before (and whether or not) anything renders.

Jinja stops at a template's first syntax error. To list them all, the offending line's tags
are replaced by neutral ones of the same shape (a block opener stays a block opener, so its
`end` still matches) and the template is parsed again; a line that still fails is blanked.
Bounded: at most MAX_ERRORS per file.
"""

from __future__ import annotations

import re

from jinja2 import Environment, TemplateSyntaxError

MAX_ERRORS = 50

_TAG = re.compile(r"(\{%-?)(.*?)(-?%\})|(\{\{-?)(.*?)(-?\}\})", re.S)
_NEUTRAL_BLOCK = {
    "if": "if 0", "elif": "elif 0", "for": "for _ in ()", "with": "with", "filter": "filter e",
    "macro": "macro _vaq_neutral()", "call": "call _vaq_neutral()", "block": "block _vaq_neutral",
    "set": "set _vaq_neutral = 0", "include": "if 0", "import": "if 0", "from": "if 0",
}
_KEEP = {"else", "endif", "endfor", "endwith", "endfilter", "endmacro", "endcall", "endblock",
         "endset", "raw", "endraw"}


def _neutral_tag(match: re.Match[str]) -> str:
    if match.group(4):  # {{ expression }}
        return f"{match.group(4)} 0 {match.group(6)}"
    body = match.group(2).strip()
    word = body.split(None, 1)[0] if body else ""
    if word in _KEEP:
        return match.group(0)
    if word == "include" or word == "import" or word == "from":
        return f"{match.group(1)} if 0 %}}{{% endif {match.group(3)}"
    neutral = _NEUTRAL_BLOCK.get(word)
    if word == "set" and "=" not in body:  # a block set: keeps its endset
        neutral = "set _vaq_neutral"
    if neutral is None:
        return ""
    return f"{match.group(1)} {neutral} {match.group(3)}"


def template_syntax_errors(env: Environment, source: str, name: str
                           ) -> list[tuple[int, str]]:
    """(line, message) of each syntax error in `source`, in line order."""
    errors: list[tuple[int, str]] = []
    lines = source.split("\n")
    tried: set[int] = set()
    for _ in range(MAX_ERRORS * 2):
        try:
            env.parse("\n".join(lines), name, name)
            break
        except TemplateSyntaxError as exc:
            lineno = exc.lineno or 1
            index = min(max(lineno, 1), len(lines)) - 1
            message = exc.message or "syntax error"
            if index not in tried and (lineno, message) not in errors:
                errors.append((lineno, message))
            if len(errors) >= MAX_ERRORS:
                break
            if index in tried:
                if not lines[index]:
                    break  # an error at a line already blank: the rest is unreachable
                lines[index] = ""
            else:
                tried.add(index)
                neutral = _TAG.sub(_neutral_tag, lines[index])
                lines[index] = neutral if neutral != lines[index] else ""
    return sorted(set(errors))


_ANY_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}")


def template_line_of(template: str, rendered: str, line: int) -> int | None:
    """The template line that produced line `line` of the rendered text, when one template
    line's literal text (what is outside its tags) matches it unambiguously; else None.

    A validator reports lines of the rendered file; a person edits the template. Lines
    that are mostly literal (keys, JSON punctuation) map back; pure expressions do not.
    """
    out = rendered.split("\n")
    if not 1 <= line <= len(out):
        return None
    target = out[line - 1]
    best: tuple[int, int] | None = None  # (-literal chars, distance), line
    best_line = None
    for number, text in enumerate(template.split("\n"), start=1):
        fragments = [f for f in _ANY_TAG.split(text) if f.strip()]
        if not fragments:
            continue
        pos, ok = 0, True
        for fragment in fragments:
            found = target.find(fragment, pos)
            if found < 0:
                ok = False
                break
            pos = found + len(fragment)
        if not ok:
            continue
        score = (-sum(len(f.strip()) for f in fragments), abs(number - line))
        if best is None or score < best:
            best, best_line = score, number
    return best_line
