"""Spaces: op lists come from the torch-free ``fbnet.space`` (v1) and ``fbnet.space_v2`` (v2, the
FBNetV2 grid); the DB keeps a registered copy (a v2 space registers its name, version and grid size:
its ops are the keys of :attr:`fbnet.space_v2.SpaceV2.grid`)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Space as SpaceRow
from db.models import SpaceOp
from fbnet import wire
from fbnet.space import Space, SpaceError, get_space, list_spaces
from fbnet.space_v2 import SpaceV2, get_v2_space, is_v2_space, list_v2_spaces
from profiler_server.errors import Invalid, NotFound


@lru_cache(maxsize=64)
def _space(name: str) -> Space:
    return get_space(name)


def resolve_space(name: str) -> Space:
    """The space called ``name`` (404 naming the problem if there is none)."""
    try:
        return _space(name)
    except SpaceError as e:
        raise NotFound(str(e)) from None


def resolve_any_space(name: str) -> Space | SpaceV2:
    """A v1 space or a v2 (FBNetV2) space by name (404 naming the problem if there is none)."""
    return get_v2_space(name) if is_v2_space(name) else resolve_space(name)


def resolve_v1_space(name: str) -> Space:
    """:func:`resolve_space`, with a clear 422 for a v2 space where only v1 spaces are served."""
    if is_v2_space(name):
        raise Invalid(f"{name} is a v2 (FBNetV2) space: this route serves v1 spaces; its op grid is "
                      f"`fbnet-search ops --space {name}`, its latencies GET /tables/{{device}}?space={name}")
    return resolve_space(name)


def n_ops(space: Space | SpaceV2) -> int:
    return len(space.grid) if isinstance(space, SpaceV2) else len(space.ops)


def space_out(space: Space) -> wire.SpaceOut:
    return wire.SpaceOut(space=space.name, version=space.version, ops=space.op_list())


def summaries(session: Session) -> list[wire.SpaceSummary]:
    names = list(dict.fromkeys([*list_spaces(), *list_v2_spaces(),
                                *session.scalars(select(SpaceRow.name).order_by(SpaceRow.name))]))
    out = []
    for n in names:
        sp = resolve_any_space(n)
        out.append(wire.SpaceSummary(space=sp.name, version=sp.version, n_ops=n_ops(sp)))
    return out


def space_row(session: Session, name: str) -> SpaceRow | None:
    return session.scalars(select(SpaceRow).where(SpaceRow.name == name)).first()


def _write_ops(session: Session, row: SpaceRow, space: Space | SpaceV2) -> None:
    session.execute(delete(SpaceOp).where(SpaceOp.space_id == row.id))
    if isinstance(space, SpaceV2):  # the grid is the declaration's: no per-op rows
        return
    session.add_all(SpaceOp(space_id=row.id, **op) for op in space.op_list())


def ensure_space(session: Session, space: Space | SpaceV2) -> SpaceRow:
    """The registered row of ``space``, registering (or refreshing) its op list when needed."""
    row = space_row(session, space.name)
    if row is None:
        try:
            with session.begin_nested():
                row = SpaceRow(name=space.name, version=space.version, n_ops=n_ops(space))
                session.add(row)
                session.flush()
                _write_ops(session, row, space)
                session.flush()
        except IntegrityError:  # registered concurrently by another writer
            row = space_row(session, space.name)
            assert row is not None
    elif row.version != space.version:
        row.version, row.n_ops = space.version, n_ops(space)
        _write_ops(session, row, space)
        session.flush()
    return row
