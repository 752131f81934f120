"""fbnet-agent's command line: settings come from typed configs, a ``--config`` TOML file fills them,
explicit options override the file, a bad value is a one-line error with exit 2, and every command's
help names the environment variables it reads. ``profile --dry-run`` shows the protocol it would run
without a service."""

from __future__ import annotations

import pytest

from tests.doubles.support import SPACE, run_agent

ACCOUNT = ["--server", "http://127.0.0.1:9", "--device", "d", "--token", "t"]


def plan(tmp_path, *args: str) -> tuple[int, str]:
    return run_agent("profile", *ACCOUNT, "--space", SPACE, "--ops", "fc-1504-10", "--cache-dir",
                     str(tmp_path / "cache"), "--dry-run", *args)


def test_protocol_settings_come_from_a_config_file_and_explicit_options_override_it(tmp_path):
    f = tmp_path / "protocol.toml"
    f.write_text("rounds = 4\nwarmup = 1\n[protocol]\nrepeats = 7\n")
    code, out = plan(tmp_path, "--config", str(f))
    assert code == 0 and "4 x (1+7)" in out, out
    code, out = plan(tmp_path, "--config", str(f), "--repeats", "9")
    assert code == 0 and "4 x (1+9)" in out, out
    code, out = plan(tmp_path)
    assert code == 0 and "3 x (10+50)" in out, out  # the defaults


@pytest.mark.parametrize("command,text,needle", [
    ("profile", "rounds = 0\n", "--rounds"),
    ("profile", "transport = 'usb'\n", "--transport"),
    ("profile", "roundz = 3\n", "roundz"),
    ("profile", "settle_tau = 0.9\n", "settle_tau"),  # profile does not settle: not one of its settings
    ("validate", "settle_tau = 2\n", "--settle-tau"),
    ("validate", "[selector]\nprecision = 'fp64'\n", "--precision"),
])
def test_a_bad_value_in_the_config_file_is_one_line_and_exit_2(tmp_path, command, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    code, out = run_agent(command, *ACCOUNT, "--space", SPACE, "--cache-dir", str(tmp_path / "cache"),
                          "--config", str(f), *(["--dry-run"] if command == "profile" else []))
    assert code == 2, out
    assert needle in out and "Traceback" not in out and len(out.strip().splitlines()) == 1, out


def test_a_missing_account_setting_is_one_line_and_exit_2(tmp_path):
    code, out = run_agent("profile", "--device", "d", "--token", "t", "--dry-run")
    assert code == 2 and "--server" in out and "Traceback" not in out, out


@pytest.mark.parametrize("command,names", [
    ("profile", ["FBNET_SERVER", "FBNET_AGENT_TOKEN", "FBNET_AGENT_CACHE", "FBNET_RUNNER"]),
    ("validate", ["FBNET_SERVER", "FBNET_AGENT_TOKEN", "FBNET_AGENT_CACHE", "FBNET_RUNNER"]),
    ("upload", ["FBNET_SERVER", "FBNET_AGENT_TOKEN", "XDG_CACHE_HOME"]),
    ("export", ["FBNET_AGENT_CACHE"]),
])
def test_every_command_names_the_environment_variables_it_reads(command, names, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out = run_agent(command, "--help")
    assert code == 0, out
    for name in names:
        assert name in out, (name, out)
