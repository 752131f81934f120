"""arch.json: one pydantic model, written and read in fbnet.archfile only (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from typer.testing import CliRunner

from fbnet.archfile import ArchFile, ArchFileError, read_arch_file, write_arch_file
from fbnet.space import Arch
from search.cli import app

B = list(Arch.parse("FBNet-B").blocks)


def test_round_trip_and_old_files_load(tmp_path):
    doc = ArchFile(arch=B, predicted_latency_us=123.5, space="fbnet-cifar", theta=[[0.0] * 9] * 22,
                   theta_entropy=2.197, argmax_prob=[1 / 9] * 22, target_ms=0.2, table_configuration={"threads": 1})
    p = write_arch_file(doc, tmp_path)
    assert p == tmp_path / "arch.json"
    back = read_arch_file(tmp_path)
    assert back == doc and back.architecture == Arch.parse("FBNet-B")
    # a file written before the newer fields existed (the keys `fbnet-search run` wrote until now)
    old = {"arch": B, "predicted_latency_us": 1.0, "space": "fbnet-cifar", "space_version": "x", "device": "d",
           "table_version": "v", "theta": [[1.0] * 9] * 22, "history": [], "data": "digits", "world_size": 1,
           "config": {}, "finished": True}
    (tmp_path / "old.json").write_text(json.dumps(old))
    got = read_arch_file(tmp_path / "old.json")
    assert got.arch == B and got.target_ms is None and got.selection == "argmax"


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"theta": []}', "has no 'arch'"),
    ('{"arch": ["k3_e1"]}', "22"),
])
def test_bad_files_fail_with_one_line(tmp_path, content, message):
    p = tmp_path / "arch.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ArchFileError, match=message):
        read_arch_file(p)
    r = CliRunner().invoke(app, ["train", "--from", str(p), "--data", "digits"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_archfile_imports_no_torch():
    code = "import sys, fbnet.archfile; assert 'torch' not in sys.modules, 'torch loaded'"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
