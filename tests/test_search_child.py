"""Child training from scratch and export through the device agents' exporter (.pte, run back)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fbnet.blocks import FBNet
from fbnet.space import Arch, get_space
from search.child import evaluate
from search.cli import app
from search.data import load_dataset


@pytest.mark.slow
def test_train_then_export_pte_runs_like_the_trained_model(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--arch", "FBNet-A", "--space", "fbnet-cifar", "--data", "digits",
                            "--subset", "400", "--epochs", "2", "--batch-size", "16", "--out", str(tmp_path),
                            "--no-progress", "--cpu"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "child.json").read_text())
    assert report["n_test"] == 200
    # it learned: well above chance (0.1) on held-out digits (measured ~0.8; chance-level training fails this)
    assert report["test_acc"] >= 0.4, report
    ck = torch.load(tmp_path / "child.pt", weights_only=False)
    assert ck["arch"] == list(Arch.parse("FBNet-A").blocks)
    # the reported accuracy is that of the saved weights on the test split
    space = get_space("fbnet-cifar")
    saved = FBNet(space, Arch.parse("FBNet-A"))
    saved.load_state_dict(ck["state_dict"])
    data = load_dataset("digits", 32, subset=400, seed=0)
    assert evaluate(saved, data.test_x, data.test_y) == pytest.approx(report["test_acc"])

    pytest.importorskip("executorch")
    e = runner.invoke(app, ["export", "--weights", str(tmp_path / "child.pt"), "--format", "pte",
                            "--out", str(tmp_path / "child.pte")])
    assert e.exit_code == 0, e.output
    assert (tmp_path / "child.pte").stat().st_size > 100_000

    from executorch.runtime import Runtime

    model = FBNet(space, Arch.parse("FBNet-A"))
    model.load_state_dict(ck["state_dict"])
    x = load_dataset("digits", 32, subset=8).test_x[:1].contiguous()
    want = model.eval()(x)
    got = Runtime.get().load_program(tmp_path / "child.pte").load_method("forward").execute((x,))[0]
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


def test_export_refuses_mismatched_weights_and_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--format", "pte", "--out", str(tmp_path / "x.pte")])
    assert r.exit_code == 2 and "--arch" in r.output
    r = runner.invoke(app, ["export", "--arch", "FBNet-Z", "--out", str(tmp_path / "x.pte")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--from", str(tmp_path / "missing"), "--data", "digits"])
    assert r.exit_code == 2 and "does not exist" in r.output
