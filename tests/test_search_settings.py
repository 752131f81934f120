"""``fbnet-search run`` reads typed settings: ``--preset paper`` is the paper's setting, a ``--config``
file layers over it and explicit options over both; a bad value is one line and exit 2; every command
names the environment variables it reads."""

from __future__ import annotations

import json

import pytest
from search_helpers import macs_table
from typer.testing import CliRunner

from fbnet.client import save_table
from fbnet.space import get_space
from search.cli import app
from search.cli.search import PRESETS
from search.config import PAPER, SearchConfig, search_overrides

SPACE = get_space("fbnet-cifar")


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "macs.json"
    save_table(macs_table(SPACE), path)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_the_paper_preset_is_the_papers_setting():
    cfg = SearchConfig(**PRESETS["paper"]["search"])
    assert (cfg.epochs, cfg.warmup, cfg.sampler, cfg.weight_mix, cfg.weights) == (90, 10, "gumbel", "sample",
                                                                                  "independent")
    assert (cfg.proxy_width, cfg.proxy_resolution, cfg.theta_lr, cfg.theta_batch_size) == (1.0, None, 0.01, None)
    assert not cfg.anchor and PRESETS["paper"]["search"] is PAPER
    assert not cfg.sandwich and cfg.entropy_weight == 0  # v2: the paper trains the sampled path alone
    assert cfg.cost_of == "draw"  # v2: the paper prices the Gumbel weights
    assert "--preset" in invoke("run", "--help").output and "--paper" not in invoke("run", "--help").output
    r = invoke("run", "--paper")
    assert r.exit_code == 2 and "--preset paper" in r.output


def test_a_run_layers_preset_then_file_then_command_line(table_file, tmp_path):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('epochs = 1\nwarmup_epochs = 0\nbatch_size = 16\ntheta_lr = 0.05\n'
                        '[search]\nproxy_width = 0.25\nproxy_resolution = 8\n'
                        '[data]\ndata = "digits"\nsubset = 64\n')
    out = tmp_path / "run"
    r = invoke("run", "--table", table_file, "--preset", "paper", "--config", run_toml, "--theta-lr", "0.07",
               "--out", out, "--no-progress", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "arch.json").read_text())
    cfg = doc["config"]
    assert cfg["theta_lr"] == 0.07  # the command line over the file and the preset
    assert (cfg["epochs"], cfg["warmup_epochs"], cfg["proxy_width"], cfg["proxy_resolution"]) == (1, 0, 0.25, 8)
    assert (cfg["weight_mix"], cfg["theta_batch_size"]) == ("sample", None)  # the preset where nothing overrides it
    assert doc["data"] == "digits" and len(doc["history"]) == 1


@pytest.mark.parametrize("text,needle", [
    ("epochs = 0\n", "--epochs"),
    ('sampler = "gdas"\n', "--sampler"),
    ("epochs = 10\nwarmup_epochs = 10\n", "--warmup-epochs"),
    ("proxy_width = 2\n", "--proxy-width"),
    ("[search]\nepoch = 3\n", "epoch"),
    ("subset = -5\n", "--subset"),
    ("epochs = \n", "run.toml"),
])
def test_a_bad_setting_is_one_line_and_exit_2(table_file, tmp_path, text, needle):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(text)
    r = invoke("run", "--table", table_file, "--config", run_toml, "--out", tmp_path / "o", "--no-progress")
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_a_bad_option_is_one_line_and_exit_2(table_file, tmp_path):
    r = invoke("run", "--table", table_file, "--theta-lr", "0", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--theta-lr" in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("command,names", [
    ("run", ("FBNET_TOKEN", "FBNET_FASHION_MNIST_DIR", "WORLD_SIZE")),
    ("fetch", ("FBNET_TOKEN",)), ("predict", ("FBNET_TOKEN",)), ("sample", ("FBNET_TOKEN",)),
    ("train", ("FBNET_FASHION_MNIST_DIR",)), ("export", ("TQDM_DISABLE",)),
])
def test_every_command_names_its_environment(command, names):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    assert "Environment:" in r.output and all(n in r.output for n in names), r.output


def test_key_value_overrides_are_typed_and_a_bad_pair_names_itself():
    """The benches' ``--search-opt KEY=VALUE``: one parser, typed by SearchConfig, every mistake named."""
    got = search_overrides(["theta_lr=0.05", "epochs=3", "target_ms=none", "sampler=gumbel"])
    assert got == {"theta_lr": 0.05, "epochs": 3, "target_ms": None, "sampler": "gumbel"}
    assert isinstance(got["epochs"], int)
    for bad, needle in [("theta_lr", "expected KEY=VALUE"), ("no_such_field=1", "no_such_field"),
                        ("epochs=many", "epochs"), ("sampler=dice", "sampler")]:
        with pytest.raises(ValueError, match=needle):
            search_overrides([bad])
