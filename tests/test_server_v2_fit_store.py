"""A v2 grid's fit is stored by content (``grid_fits``): a restarted server serves the stored fit,
byte for byte what the fit served, and a new run refits and stores a new row; the newest few rows
per device, space and configuration are kept."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import REPO, LiveServer, start_server
from sqlalchemy import create_engine, text
from test_server_v2_grid import SPACE, finish, open_run, plan, table, upload

pytestmark = pytest.mark.pg  # the rows are written and read on SQLite and PostgreSQL


def _rows(db_url: str) -> list[tuple[int, str, str]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT id, content_hash, meta FROM grid_fits ORDER BY id"))]
    engine.dispose()
    return rows


def _set_meta(db_url: str, row_id: int, meta: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE grid_fits SET meta = :m WHERE id = :i"), {"m": meta, "i": row_id})
    engine.dispose()


def _land(server, token, device: str, batch: int, seed: int) -> None:
    p = plan(server, token, device, batch=batch, design=90)  # design rounds only: no bootstrap fits
    run_id = open_run(server, token)
    upload(server, token, run_id, p["keys"], random.Random(seed))
    finish(server, token, run_id)


def test_a_restarted_server_serves_the_stored_fit_and_a_new_run_refits(engine, tmp_path):
    server, cleanup = start_server(engine, tmp_path / "server")
    restarted = None
    try:
        token = server.create_device("stored-fit")
        _land(server, token, "stored-fit", 80, 3)
        first = table(server, "stored-fit")
        assert first.status_code == 200 and first.json()["counts"]["fitted"] > 19000
        (row_id, _, meta), = _rows(server.db_url)  # the GET stored its fit
        server.stop()
        # the stored row is what a restarted server serves: its held-out error, changed in the database,
        # is in the table; with the true value put back, the body is byte for byte the fit's
        true_mape = json.loads(meta)["heldout"]["mape"]
        changed = json.loads(meta)
        changed["heldout"]["mape"] = 12.5
        _set_meta(server.db_url, row_id, json.dumps(changed))
        restarted = LiveServer(engine, server.db_url, tmp_path / "server2", port=server.port,
                               extra_env={"PYTHONPATH": str(REPO)}).start()
        again = table(restarted, "stored-fit")
        assert again.status_code == 200 and again.headers["ETag"] == first.headers["ETag"]
        assert again.json()["model"]["heldout"]["mape"] == 12.5 != true_mape
        assert again.content.replace(b'"mape":12.5', f'"mape":{true_mape!r}'.encode()) == first.content
        assert len(_rows(server.db_url)) == 1  # read, not stored again
        # a finished run changes the content: a new fit (the true error again), stored as a second row
        _set_meta(server.db_url, row_id, meta)
        _land(restarted, token, "stored-fit", 10, 4)
        new = table(restarted, "stored-fit")
        assert new.headers["ETag"] != first.headers["ETag"] and new.json()["counts"]["measured"] == 90
        assert new.json()["model"]["heldout"]["mape"] != 12.5 and new.json()["model"]["heldout"]["n"] == 90
        rows = _rows(server.db_url)
        assert len(rows) == 2 and rows[0][0] == row_id and json.loads(rows[1][2])["heldout"]["n"] == 90
    finally:
        if restarted is not None:
            restarted.stop()
        cleanup()


def test_the_newest_fits_are_kept_per_configuration(tmp_path):
    """FitStore.save keeps KEEP_FITS rows per device, space and configuration; other configurations'
    rows stay; storing the same content twice is one row."""
    from db.engine import open_database
    from db.migrate import upgrade_to_head
    from db.models import Device, Space
    from fbnet.space_v2 import get_v2_space
    from profiler_server.domain import fitting
    from profiler_server.domain.grid import KEEP_FITS, FitStore, GridFit, grid_of

    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade_to_head(url)
    db = open_database(url)
    with db.write_sessions() as s:
        dev = Device(name="d", platform="linux", runtime="x", precision="fp32", meta={})
        sp = Space(name=SPACE, version="v", n_ops=1)
        s.add_all([dev, sp])
        s.commit()
        ids = (dev.id, sp.id)
    grid = grid_of(get_v2_space(SPACE))
    h = fitting.HeldOut(10, 5, 0.9, 3.0, np.empty(0))
    with db.read_sessions() as s:
        for i in range(KEEP_FITS + 2):
            for cfg in ("a", "b") if i == 0 else ("a",):
                fit = GridFit("padded+gbm", {"ir": 8}, h, np.full(len(grid.ops), float(i)), {"ir": 10},
                              np.empty((0, 15)), np.empty(0))
                FitStore(s, *ids, cfg).save(f"{cfg}{i}", fit)
        FitStore(s, *ids, "a").save(f"a{KEEP_FITS + 1}", fit)  # the same content again: no new row
        stored = FitStore(s, *ids, "a").load(f"a{KEEP_FITS + 1}", grid, "padded+gbm", np.empty((0, 15)), np.empty(0))
    rows = _rows(url)
    assert [r[1] for r in rows] == ["b0"] + [f"a{i}" for i in range(2, KEEP_FITS + 2)]
    assert stored.stored and stored.predicted.tolist() == [float(KEEP_FITS + 1)] * len(grid.ops)
    assert stored.heldout.mape == 3.0 and stored.widths == {"ir": 8} and stored.families == {"ir": 10}
    db.dispose()
