"""Budgets for templates: a commit is input, and a template is a program.

Jinja's sandbox stops a template from reaching Python internals; it does not stop one from
running for hours (`range(100000)` twice nested) or from building 3 GB
(`'a' * 3*10**9`). Every render here runs against a deadline (checked at each loop
iteration and each call, so a runaway loop or recursive macro ends with an error naming its
template) and an output budget (checked on `+`, `*`, `**` and `%` before they allocate, on every
chunk written, and on filters that widen text). What still escapes these checks is bounded
by the render worker's memory limit and wall clock (`render_worker`).
"""

from __future__ import annotations

import contextvars
import functools
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError


@dataclass(frozen=True)
class RenderBudget:
    """What one template render and one revision's renders may spend."""

    template_seconds: float = 2.0  # one template for one host and stage
    revision_seconds: float = 300.0  # every host and stage of a revision, in the worker
    output_bytes: int = 4 << 20  # one rendered file (an Ignition with embedded files: ~100 KB)
    worker_memory_bytes: int = 2 << 30  # address space the worker may add to what it forked


DEFAULT_BUDGET = RenderBudget()


class BudgetExceeded(SecurityError):
    """A template went past its time or size budget. A SecurityError, so Jinja treats it as
    the sandbox refusing an operation."""


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vaquero_render_deadline", default=None)
_limit: contextvars.ContextVar[int] = contextvars.ContextVar(
    "vaquero_render_output_limit", default=DEFAULT_BUDGET.output_bytes)


_alarm = False  # set in the render worker, where SIGALRM may interrupt any Python code


def _on_alarm(signum: int, frame: Any) -> None:
    raise BudgetExceeded("the template ran past its time budget (in a helper it called)")


def enable_alarm() -> None:
    """In the render worker (a process of its own, this its main thread): each template
    also gets a SIGALRM timer, which interrupts what the deadline checks cannot see (Python
    code of a library function the template called, running long on its own)."""
    global _alarm
    signal.signal(signal.SIGALRM, _on_alarm)
    _alarm = True


@contextmanager
def template_budget(budget: RenderBudget) -> Iterator[None]:
    """The deadline and output limit of one render, for the thread that renders."""
    token_d = _deadline.set(time.monotonic() + budget.template_seconds)
    token_l = _limit.set(budget.output_bytes)
    if _alarm:
        signal.setitimer(signal.ITIMER_REAL, budget.template_seconds * 1.5)
    try:
        yield
    finally:
        if _alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _deadline.reset(token_d)
        _limit.reset(token_l)


def tick() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise BudgetExceeded("the template ran past its time budget "
                             "(a loop or recursion too large?)")


def check_size(size: int) -> None:
    limit = _limit.get()
    if size > limit:
        raise BudgetExceeded(f"the template would produce {size:,} bytes, more than its "
                             f"budget of {limit:,}")


def budgeted_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every `{% for %}` iterates through: the deadline is checked at each item."""
    for item in iterable:
        tick()
        yield item


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse a `+`, `*`, `**` or `%` whose result would be past the output budget, before
    Python allocates it (one C call, which no deadline can interrupt)."""
    if operator == "+":
        if _sized(left) is not None and _sized(right) is not None:
            check_size(len(left) + len(right))
    elif operator == "*":
        for seq, n in ((left, right), (right, left)):
            size = _sized(seq)
            if size is not None and isinstance(n, int):
                check_size(size * n)
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if right > 0 and abs(left) > 1 and left.bit_length() * right > 8 * _limit.get():
            raise BudgetExceeded("the template computes a number too large to print")
    elif operator == "%" and isinstance(left, str):
        args = right if isinstance(right, tuple) else (right,)
        if any(isinstance(a, int) and a > _limit.get() for a in args):
            raise BudgetExceeded("a %-format width past the output budget")


def check_call_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """`'x'.ljust(10**9)`, `'x'.center(...)`, `'x'.zfill(...)`: a width past the output
    budget is refused whatever the callee."""
    tick()
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and value > _limit.get():
            check_size(value)


_WIDENING_FILTERS = ("center", "indent", "wordwrap", "truncate", "format", "join", "replace",
                     "batch", "slice", "list", "string", "tojson", "urlencode")


def bound_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose integer arguments and result are held to the output budget."""

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check_call_args(args, kwargs)
        out = func(*args, **kwargs)
        size = _sized(out)
        if size is not None:
            check_size(size)
        return out

    return bounded


def bound_filters(filters: dict[str, Callable[..., Any]]) -> None:
    for name in _WIDENING_FILTERS:
        if name in filters:
            filters[name] = bound_filter(filters[name])


LOOP_GUARD = "__vaquero_loop__"
SIZE_GUARD = "__vaquero_size__"


def sized(value: Any) -> Any:
    """What every `~` concatenation passes through: doubling a string in a loop stops at
    twice the budget instead of at the machine's memory."""
    size = _sized(value)
    if size is not None:
        check_size(size)
    return value


def _guard(name: str, node: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load", lineno=node.lineno), [node], [], None, None,
                      lineno=node.lineno)


def guard_template(template: nodes.Template) -> nodes.Template:
    """Rewrite every `{% for x in it %}` as `{% for x in __vaquero_loop__(it) %}` and every
    `a ~ b` as `__vaquero_size__(a ~ b)`."""
    for loop in template.find_all(nodes.For):
        loop.iter = _guard(LOOP_GUARD, loop.iter)
    for parent in list(template.find_all(nodes.Node)):
        for field_name in parent.fields:
            value = getattr(parent, field_name, None)
            if isinstance(value, nodes.Concat):
                setattr(parent, field_name, _guard(SIZE_GUARD, value))
            elif isinstance(value, list):
                value[:] = [_guard(SIZE_GUARD, v) if isinstance(v, nodes.Concat) else v
                            for v in value]
    return template


def bounded_join(chunks: Iterable[str]) -> str:
    """Join a template's output chunks, refusing once they pass the output budget."""
    out: list[str] = []
    size = 0
    limit = _limit.get()
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            check_size(size)
        out.append(chunk)
    return "".join(out)
