"""The README is the one truth for set-up: `.ci/run` executes exactly its fenced command blocks."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)


def test_readme_blocks_are_the_documented_commands():
    assert rc.commands("prerequisite") == ["pip install torch==2.13.0"]
    assert rc.commands("setup") == ['pip install -e ".[test]"', "moeacc run"]
    assert rc.commands("test") == ["python3 -m pytest -n 2 -p no:cacheprovider"]


def test_ci_runs_every_readme_block_and_nothing_else():
    ci = (ROOT / ".ci" / "run").read_text()
    code = [ln for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert "for step in prerequisite setup test; do" in ci
    assert not any(re.search(r"\b(pip|pytest|moeacc)\b", ln) for ln in code if "readme_commands" not in ln), \
        "`.ci/run` must not run its own pip/pytest/moeacc commands besides the README's"


def test_missing_block_is_a_clear_error():
    with pytest.raises(SystemExit, match="no fenced block after '<!-- .ci/run: deploy -->'"):
        rc.commands("deploy", "# nothing here")


def test_every_test_dependency_is_declared():
    """Each third-party module the tests import is installed by `.[test]` (or by the base install)."""
    import tomllib
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!\[ ]", d)[0].lower().replace("_", "-") for d in py["dependencies"] + py["optional-dependencies"]["test"]}
    imports = set()
    for f in (ROOT / "tests").rglob("*.py"):
        imports |= set(re.findall(r"^\s*(?:import|from) ([a-zA-Z_]\w*)", f.read_text(), re.M))
    dist = {"yaml": "pyyaml", "xdist": "pytest-xdist", "pytest_timeout": "pytest-timeout"}
    local = {"harness", "references", "tests", "conftest"}
    import sys
    third = {m for m in imports if m not in local and m not in sys.stdlib_module_names}
    missing = sorted(m for m in third if dist.get(m, m).lower().replace("_", "-") not in declared)
    assert not missing, f"tests import {missing}, which neither the base install nor .[test] declares"
