"""``fbnet-search spaces|ops|arch`` on the FBNetV2 spaces: the released models' counts through the
command, the op grid's size, one-line errors for bad input; the v1 behaviour alongside."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fbnet.space_v2 import get_v2_space, grid_summary
from search.cli import app

# The released figures (FBNETV2.md section 4: model_info_fbnet_v2.json), MFLOPs and M params.
RELEASED = {
    "FBNetV2-F1": (56.4, 6.00), "FBNetV2-F2": (85.4, 6.00), "FBNetV2-F3": (121.8, 6.90),
    "FBNetV2-F4": (238.4, 6.99), "FBNetV2-L1": (326.0, 8.50), "FBNetV2-L2": (423.9, 8.50),
}
CIFAR_ARCH = ("res:28,stem:8,ir_k3:8:e1,"
              + ",".join(["ir_k5_hs:16:e4"] * 4 + ["ir_k3_sehsig:24:e3"] * 4 + ["skip:40"] * 10
                         + ["ir_k5_sehsig_hs:80:e6"] * 6)
              + ",head:640")


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(r, *words: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("name", list(RELEASED))
def test_the_released_models_counts_through_the_command(name):
    r = _cli("arch", name, "--space", "fbnetv2-224", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    mflops, mparams = RELEASED[name]
    assert doc["mflops"] == pytest.approx(mflops, rel=0.02)
    assert doc["params"] / 1e6 == pytest.approx(mparams, rel=0.02)
    assert doc["name"] == name and doc["space"] == "fbnetv2-224" and doc["layers"] == 25
    assert {"arch", "resolution", "ops", "torch_params", "identity_layers", "off_grid_expansions"} <= set(doc)


def test_the_text_form_is_a_per_layer_table_and_the_arch_text_round_trips():
    r = _cli("arch", "fbnetv2-f4", "--space", "fbnetv2-224")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("FBNetV2-F4 in fbnetv2-224 at 224 px: 238.35 MFLOPs (released 238.35")
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0] in {"stem", "head", "fc"} | {
        f"{i}/s{get_v2_space('fbnetv2-224').layers[i].stage}" for i in range(25)}]
    assert [x[0] for x in rows][:2] == ["stem", "0/s0"] and [x[0] for x in rows][-2:] == ["head", "fc"]
    assert len(rows) == 1 + 25 + 2 and sum(x[1] == "identity" for x in rows) == 7
    # the printed text is the architecture: fed back, the same counts
    again = json.loads(_cli("arch", lines[1], "--space", "fbnetv2-224", "--format", "json").stdout)
    assert again["mflops"] == pytest.approx(238.35, abs=0.01) and again["arch"] == lines[1]
    assert "name" not in again  # a text is not claimed to be a released model


def test_a_v2_text_in_the_cifar_space():
    r = _cli("arch", CIFAR_ARCH, "--space", "fbnetv2-cifar", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["resolution"] == 28 and doc["identity_layers"] == 9 and doc["off_grid_expansions"] == []
    assert doc["mflops"] > 0 and doc["params"] > 0


def test_ops_says_the_grid_size_and_does_not_flood_the_terminal():
    g = json.loads(json.dumps(grid_summary("fbnetv2-cifar")))  # as JSON writes it (string keys)
    r = _cli("ops", "--space", "fbnetv2-cifar")
    assert r.exit_code == 0, r.output
    assert f"{g['ops']} unique ops" in r.stdout.splitlines()[0]
    assert f"showing 20 of {g['ops']} ops" in r.stdout and len(r.stdout.splitlines()) < 40
    count = _cli("ops", "--space", "fbnetv2-cifar", "--count", "--format", "json")
    assert json.loads(count.stdout) == g
    five = json.loads(_cli("ops", "--space", "fbnetv2-cifar", "--format", "json", "--limit", "5").stdout)
    assert len(five["ops"]) == 5 and five["shown"] == 5 and five["summary"] == g


def test_ops_json_gives_every_row_of_the_grid():
    g = grid_summary("fbnetv2-cifar")
    doc = json.loads(_cli("ops", "--space", "fbnetv2-cifar", "--format", "json").stdout)
    assert len(doc["ops"]) == g["ops"] == len({o["key"] for o in doc["ops"]}) == doc["shown"]
    assert sum(o["block"].startswith("ir_k") for o in doc["ops"]) == g["by_block"]["ir"]
    assert {"key", "block", "cin", "h", "mid", "cout", "stride", "macs", "params"} <= set(doc["ops"][0])


def test_spaces_lists_v1_and_v2():
    rows = json.loads(_cli("spaces", "--format", "json").stdout)
    by = {r["space"]: r for r in rows}
    assert {"fbnet-224", "fbnet-cifar", "fbnetv2-224", "fbnetv2-cifar"} <= set(by)
    assert by["fbnetv2-cifar"]["n_ops"] == grid_summary("fbnetv2-cifar")["ops"]
    assert by["fbnetv2-cifar"]["resolution"] == [24, 28, 32] and by["fbnetv2-224"]["family"] == "v2"
    assert "family" not in by["fbnet-cifar"] and by["fbnet-cifar"]["resolution"] == 32  # v1 rows as before


def test_v1_is_unchanged():
    doc = json.loads(_cli("arch", "FBNet-B", "--format", "json").stdout)
    assert set(doc) == {"arch", "params", "mflops", "ops"} and len(doc["arch"]) == 22
    ops = json.loads(_cli("ops", "--space", "fbnet-cifar", "--format", "json").stdout)
    assert set(ops) == {"space", "version", "ops"} and len(ops["ops"]) == 112


@pytest.mark.parametrize(("args", "words"), [
    (["arch", "FBNetV2-F9", "--space", "fbnetv2-224"], ["FBNetV2-F9", "not a v2 architecture"]),
    (["arch", "res:32,stem:8,ir_k7:8:e1,head:640", "--space", "fbnetv2-cifar"], ["ir_k7"]),
    (["arch", "res:32,stem:8,ir_k3:8,head:640", "--space", "fbnetv2-cifar"], ["expansion is required"]),
    (["arch", "res:32,stem:8,skip:8", "--space", "fbnetv2-cifar"], ["no head"]),
    (["arch", "FBNetV2-F4", "--space", "fbnetv2-cifar"], ["not an architecture of fbnetv2-cifar"]),
    (["arch", "FBNetV2-F4", "--space", "fbnet-cifar"], ["FBNetV2 architecture", "v1 space"]),
    (["arch", CIFAR_ARCH, "--space", "fbnet-224"], ["FBNetV2 architecture", "v1 space"]),
    (["arch", "FBNet-A", "--space", "fbnetv2-224"], ["v1 FBNet architecture", "v2 space"]),
    (["ops", "--space", "fbnetv2-tiny"], ["unknown v2 space"]),
    (["ops", "--space", "fbnetv2-cifar", "--count", "--all"], ["--count"]),
    (["ops", "--space", "fbnetv2-cifar", "--limit", "-1"], ["--limit"]),
])
def test_bad_input_is_one_line(args, words):
    _one_line_error(_cli(*args), *words)


def test_the_installed_command():
    r = subprocess.run([sys.executable, "-m", "search.cli", "arch", "FBNetV2-F4", "--space", "fbnetv2-224",
                        "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] == 6994824
    bad = subprocess.run([sys.executable, "-m", "search.cli", "arch", "res:1", "--space", "fbnetv2-224"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
