"""Pages of the lists the API serves: keyset pagination with a byte cap.

Every list (runs, a run's measurements, a device's validations, devices) is read in a stable order of a
unique key (an id, a device name), ``limit`` items at most, after the ``cursor`` the page before gave as
``next``. A page also ends once its items' JSON passes ``budget`` bytes (at least one item a page, so a
client always advances), and rows are read in small chunks, so neither the response nor the server's
memory grows with the list. ``next`` is None only on the last page.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from fbnet.wire import MAX_ID
from profiler_server.errors import Invalid

T = TypeVar("T", bound=BaseModel)
K = TypeVar("K", bound=Hashable)

# fetch(after, n): at most n (key, item) pairs with key > after (after None: from the start), in key order
Fetch = Callable[[K | None, int], Sequence[tuple[K, T]]]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None


def paginate(fetch: Fetch, limit: int, budget: int, after=None, chunk: int = 64) -> Page:
    """Up to ``limit`` items after ``after`` whose JSON stays within ``budget`` bytes (the first item
    always taken), read ``chunk`` rows at a time; ``next`` is the last item's key when more follow."""
    items: list = []
    used, last = 0, after
    while len(items) < limit:
        want = min(chunk, limit - len(items))
        rows = fetch(last, want + 1)  # one more than wanted: is there anything after this page?
        for key, item in rows[:want]:
            size = len(item.model_dump_json())
            if items and used + size > budget:
                return Page(items, str(last))
            items.append(item)
            used, last = used + size, key
        if len(rows) <= want:
            return Page(items, None)
    return Page(items, str(last))


def id_cursor(cursor: str | None) -> int | None:
    """The id a numeric cursor names (422 naming the problem for anything else)."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > MAX_ID:
        raise Invalid(f"cursor {cursor[:40]!r} is not a cursor of this list: pass the 'next' of the page before")
    return int(cursor)


__all__ = ["Page", "id_cursor", "paginate"]
