"""Pickling for the small slotted dataclasses a compiled revision holds by the hundred
thousand (host entries, their locations and documents, fingerprints, renders).

Why: a slotted dataclass pickles its state as a tuple and unpickles it through
dataclasses' generic `__setstate__`, which looks up the class's fields again for every
instance. A restarting peer reads ~65,000 of them back from its stored revision before it
can answer a machine (appliance/sot/revision_store.py), and the render worker sends them
back to the compile by pickle too. Rebuilding each one through its own `__init__` from its
field values (read in one C call) does the same work without the per-instance lookup.
"""

from __future__ import annotations

import operator
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def pickled_by_fields(cls: type[T]) -> type[T]:
    """Give a dataclass whose fields are all `__init__` arguments a `__reduce__` that
    rebuilds it by calling the class with them. Apply it above `@dataclass`."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if not names or any(not f.init for f in fields(cls)):  # type: ignore[arg-type]
        raise TypeError(f"{cls.__name__}: every field must be an __init__ argument")
    get = operator.attrgetter(*names)

    if len(names) == 1:
        def __reduce__(self: Any) -> tuple[type[T], tuple[Any, ...]]:
            return cls, (get(self),)
    else:
        def __reduce__(self: Any) -> tuple[type[T], tuple[Any, ...]]:
            return cls, get(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls
