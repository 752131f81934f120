"""Spaces: op lists come from the torch-free ``fbnet.space``; the DB keeps a registered copy."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Space as SpaceRow
from db.models import SpaceOp
from fbnet import wire
from fbnet.space import Space, SpaceError, get_space, list_spaces
from profiler_server.errors import NotFound


@lru_cache(maxsize=64)
def _space(name: str) -> Space:
    return get_space(name)


def resolve_space(name: str) -> Space:
    """The space called ``name`` (404 naming the problem if there is none)."""
    try:
        return _space(name)
    except SpaceError as e:
        raise NotFound(str(e)) from None


def space_out(space: Space) -> wire.SpaceOut:
    return wire.SpaceOut(space=space.name, version=space.version, ops=space.op_list())


def summaries(session: Session) -> list[wire.SpaceSummary]:
    names = list(dict.fromkeys([*list_spaces(), *session.scalars(select(SpaceRow.name).order_by(SpaceRow.name))]))
    out = []
    for n in names:
        sp = resolve_space(n)
        out.append(wire.SpaceSummary(space=sp.name, version=sp.version, n_ops=len(sp.ops)))
    return out


def space_row(session: Session, name: str) -> SpaceRow | None:
    return session.scalars(select(SpaceRow).where(SpaceRow.name == name)).first()


def _write_ops(session: Session, row: SpaceRow, space: Space) -> None:
    session.execute(delete(SpaceOp).where(SpaceOp.space_id == row.id))
    session.add_all(SpaceOp(space_id=row.id, **op) for op in space.op_list())


def ensure_space(session: Session, space: Space) -> SpaceRow:
    """The registered row of ``space``, registering (or refreshing) its op list when needed."""
    row = space_row(session, space.name)
    if row is None:
        try:
            with session.begin_nested():
                row = SpaceRow(name=space.name, version=space.version, n_ops=len(space.ops))
                session.add(row)
                session.flush()
                _write_ops(session, row, space)
                session.flush()
        except IntegrityError:  # registered concurrently by another writer
            row = space_row(session, space.name)
            assert row is not None
    elif row.version != space.version:
        row.version, row.n_ops = space.version, len(space.ops)
        _write_ops(session, row, space)
        session.flush()
    return row
