"""The shape of the code a newcomer reads: small functions, and a project that speaks of itself only.

Limits (issue: "a house a newcomer can live in"): no function in the packages over 60 lines or over 8
parameters (``self``/``cls`` not counted; a typed config counts as one). ``tests/``, ``bench/`` and the
migrations are exempt; ``demo/`` is checked like the packages (a newcomer reads it first). The import-linter contracts in ``pyproject.toml`` (run by
``make test``) keep the layers: apps independent, no cycle inside a package, no library module
importing a command-line module.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fbnet", "search", "device_agents", "profiler_server", "db", "demo")
MAX_LINES, MAX_PARAMS = 60, 8


def functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def n_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if names and names[0] in ("self", "cls") else 0)


def package_files() -> list[Path]:
    out = []
    for pkg in PACKAGES:
        out += [p for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts]
    return sorted(out)


def offenders() -> list[str]:
    bad = []
    for path in package_files():
        for fn in functions(path):
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_LINES or n_params(fn) > MAX_PARAMS:
                bad.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {lines} lines, {n_params(fn)} parameters")
    return bad


def test_no_function_is_over_60_lines_or_8_parameters():
    bad = offenders()
    assert not bad, "split these into named steps or pass a typed config:\n" + "\n".join(bad)


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    p = tmp_path / "m.py"
    p.write_text(f"def f(a, b, c, d, e, f, g, h, i):\n{body}\n\nclass C:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n")
    fns = {fn.name: fn for fn in functions(p)}
    assert fns["f"].end_lineno - fns["f"].lineno + 1 > MAX_LINES and n_params(fns["f"]) == 9
    assert n_params(fns["m"]) == 8  # self is not counted


# "session" speaks of how the project was made, not of the project; database sessions are fine.
DIARY = re.compile(r"\b(sessions?|stops?)\s+(\d+|[ivx]+)\b", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    skip = (".png", ".jpg", ".pte", ".json", ".csv", ".yaml")
    return [ROOT / f for f in out.stdout.splitlines() if not f.endswith(skip) and (ROOT / f).is_file()]


def test_no_tracked_file_speaks_of_sessions_or_stops():
    hits = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if DIARY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_the_diary_pattern_matches_what_it_must():
    word, stop = "sess" + "ion", "st" + "op"  # spelled apart so that this file passes its own check
    assert DIARY.search(f"measured in {word} 6") and DIARY.search(f"{word.title()} 3: found")
    assert DIARY.search(f"{stop} 19") and DIARY.search(f"{word}s 4 and 5")
    assert not DIARY.search("with Session(engine) as session:") and not DIARY.search("the session's table")


def test_bench_is_a_suite_not_a_notebook():
    out = subprocess.run(["git", "ls-files", "bench"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    files = out.stdout.split()
    scripts = [f for f in files if f.endswith(".py")]
    readmes = [f for f in files if f.endswith(".md")]
    artefacts = [f for f in files if f not in scripts and f not in readmes]
    assert readmes == ["bench/README.md"], readmes
    assert len(artefacts) <= 10 and all(f.startswith("bench/results/") for f in artefacts), artefacts
