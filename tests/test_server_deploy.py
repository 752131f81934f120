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


def _dockerfile_copies() -> list[str]:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    return [tok.rstrip("/") for ln in lines if ln.startswith("COPY ") for tok in ln.split()[1:-1]]


def test_image_file_set_serves_without_the_rest_of_the_repo(tmp_path):
    """What the Dockerfile copies (fbnet/, db/, profiler_server/) is enough, and loads no torch."""
    copies = _dockerfile_copies()
    assert {"fbnet", "db", "profiler_server"} <= set(copies) and "search" not in copies, copies
    for name in copies:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    code = ("import sys; from profiler_server.app import create_app; import profiler_server.cli, profiler_server.plots;"
            "import fbnet.space; assert fbnet.space.__file__.startswith(sys.argv[1]), fbnet.space.__file__;"
            "print(any(m in sys.modules for m in ('torch', 'executorch', 'coremltools')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_image_installs_the_server_extra_and_repeats_no_pin():
    """Versions live in pyproject.toml once; the `server` role (and the core) pull no torch."""
    import tomllib

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "'.[server]'" in dockerfile and "==" not in dockerfile
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    server = meta["dependencies"] + meta["optional-dependencies"]["server"]
    heavy = [d for d in server if d.split("==")[0].split("[")[0] in ("torch", "executorch", "coremltools")]
    assert not heavy, heavy
    for role in ("agent", "search"):
        assert "torch==2.13.0" in meta["optional-dependencies"][role]
