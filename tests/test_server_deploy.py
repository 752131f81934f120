"""Deployment files: docker-compose.yml validates; the Docker image's file set runs the service alone."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def test_compose_file_is_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (CI installs Debian's docker-compose package)")
    env = {**os.environ, "FBNET_ADMIN_TOKEN": "x"}
    for extra in ([], ["--profile", "postgres"]):
        out = subprocess.run([exe, "-f", "docker-compose.yml", *extra, "config", "-q"], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    out = subprocess.run([exe, "-f", "docker-compose.yml", "config"], cwd=REPO, env=env, capture_output=True, text=True)
    assert "fbnet-data" in out.stdout and "sqlite:////data/fbnet.db" in out.stdout
    no_token = {k: v for k, v in env.items() if k != "FBNET_ADMIN_TOKEN"}
    out = subprocess.run([exe, "-f", "docker-compose.yml", "config", "-q"], cwd=REPO, env=no_token,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "FBNET_ADMIN_TOKEN" in out.stdout + out.stderr


def test_image_file_set_serves_without_the_rest_of_the_repo(tmp_path):
    """The Dockerfile copies only search/space.py, db/ and profiler_server/: that must be enough."""
    (tmp_path / "search").mkdir()
    for f in ("__init__.py", "space.py"):
        shutil.copy(REPO / "search" / f, tmp_path / "search" / f)
    for d in ("db", "profiler_server"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; from profiler_server.app import create_app; import profiler_server.cli, profiler_server.plots;"
            "import search.space; assert search.space.__file__.startswith(sys.argv[1]), search.space.__file__;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY search/__init__.py search/space.py search/" in dockerfile
