"""fbnet.cli.options: typed configs declared once become options; presets, --config files and the
command line layer in that order; bad values are one-line errors with exit 2."""

from __future__ import annotations

from typing import Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from fbnet.cli import Use, options
from fbnet.configuration import Selector
from fbnet.options import cli


class Knobs(BaseModel):
    rounds: int = Field(3, ge=1, description="rounds over the ops")
    threads: int = Field(1, ge=1, description="runtime threads")
    mode: Literal["fast", "slow"] = Field("fast", description="how")
    normalize: bool = Field(True, description="divide by the round factor")
    cooldown_s: float = Field(0.0, ge=0, description="rest", json_schema_extra=cli("--cooldown", panel="Rare"))


class Other(BaseModel):
    threads: int | None = Field(None, description="also threads")
    seed: int = Field(0, description="seed")


PRESETS = {"paper": {"knobs": {"rounds": 9, "mode": "slow"}, "other": {"seed": 7}}}
seen: dict = {}
app = typer.Typer()


@app.command()
@options(presets=PRESETS, config_file=True, knobs=Knobs, other=Use(Other, exclude=("seed",)))
def go(name: str = typer.Option("x", "--name", help="a plain option"), *, knobs: Knobs, other: Other):
    """A command reading two typed configs."""
    seen.clear()
    seen.update(name=name, knobs=knobs, other=other)


@app.command()
@options(selector=Selector)
def table(*, selector: Selector):
    """Reads the table selector."""
    seen.clear()
    seen.update(selector=selector)


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_defaults_come_from_the_model():
    r = invoke("go")
    assert r.exit_code == 0, r.output
    assert seen["knobs"] == Knobs() and seen["other"] == Other() and seen["name"] == "x"


def test_explicit_options_fill_the_configs_and_a_shared_field_fills_both():
    r = invoke("go", "--rounds", "5", "--threads", "4", "--mode", "slow", "--no-normalize", "--cooldown", "0.5")
    assert r.exit_code == 0, r.output
    assert seen["knobs"] == Knobs(rounds=5, threads=4, mode="slow", normalize=False, cooldown_s=0.5)
    assert seen["other"].threads == 4


def test_preset_then_file_then_command_line(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('rounds = 4\n[other]\nthreads = 2\n')
    r = invoke("go", "--preset", "paper", "--config", str(f), "--mode", "fast")
    assert r.exit_code == 0, r.output
    assert seen["knobs"].rounds == 4  # the file over the preset
    assert seen["knobs"].mode == "fast"  # the command line over the preset
    assert seen["other"] == Other(threads=2, seed=7)  # preset values of an option the command hides still apply


@pytest.mark.parametrize("args,needle", [
    (("--rounds", "0"), "--rounds"),
    (("--mode", "medium"), "medium"),
    (("--preset", "nope"), "nope"),
])
def test_bad_values_are_one_line_errors(args, needle):
    r = invoke("go", *args)
    assert r.exit_code == 2
    assert needle in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("text,needle", [("roundz = 3\n", "roundz"), ("[knobs]\nfoo = 1\n", "foo"),
                                         ("rounds = \n", "run.toml"), ("rounds = 0\n", "--rounds")])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, text, needle):
    f = tmp_path / "run.toml"
    f.write_text(text)
    r = invoke("go", "--config", str(f))
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_help_lists_the_fields_with_their_descriptions_and_panels():
    r = CliRunner().invoke(app, ["go", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in ("--rounds", "rounds over the ops", "--cooldown", "Rare", "--preset", "--config", "--no-normalize"):
        assert text in r.output


def test_the_selector_is_one_typed_config():
    r = invoke("table", "--precision", "int8", "--threads", "2", "--compute-units", "ane", "--include-unstable")
    assert r.exit_code == 0, r.output
    assert seen["selector"] == Selector(precision="int8", threads=2, compute_units="ane", include_unstable=True)
    r = invoke("table", "--precision", "fp64")
    assert r.exit_code == 2 and "fp64" in r.output
