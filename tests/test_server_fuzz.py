"""Schemathesis against /openapi.json of a live server: no 5xx, every response fits its schema."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.pg  # a 5xx may be the engine's (a length, range or character SQLite lets through)
def test_schemathesis_finds_no_server_errors(live_server, tmp_path):
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed")
    live_server.create_device("fuzz-target")
    for auth in (live_server.admin_token,):  # the admin reaches every write path past auth
        out = subprocess.run(
            [st, "run", f"{live_server.url}/openapi.json", "-c", "not_a_server_error,response_schema_conformance",
             "-n", "5", "--seed", "1", "--no-shrink", "-H", f"Authorization: Bearer {auth}"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )
        assert out.returncode == 0, out.stdout[-6000:] + "\n--- server log ---\n" + live_server.log()[-3000:]
