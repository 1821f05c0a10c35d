"""The example notebooks are committed without outputs and equal what examples/build_notebooks.py writes; the
README shows exactly the test command .ci/run runs (which also executes the notebooks with nbmake)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

nbformat = pytest.importorskip("nbformat")


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", EXAMPLES / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_stripped_and_match_their_generator():
    builder = _builder()
    assert sorted(builder.NOTEBOOKS) == sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
    for name, cells in builder.NOTEBOOKS.items():
        on_disk = json.loads((EXAMPLES / name).read_text())
        for cell in on_disk["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: strip the outputs"
        expected = json.loads(nbformat.writes(builder.build(cells)))
        assert on_disk == expected, f"{name} differs from examples/build_notebooks.py; rerun that script"


def test_readme_shows_the_test_command_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python -m pytest")]
    assert len(ci) == 1
    command = ci[0].strip()
    assert "--nbmake examples" in command
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"^(python -m pytest[^#\n]*?)\s*(?:#.*)?$", readme, flags=re.M)
    assert command in [s.strip() for s in shown], f"README must show {command!r}"
