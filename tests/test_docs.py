"""The docs site builds with --strict, and every named error is documented (cause and fix)."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from writelens import errors

ROOT = Path(__file__).resolve().parents[1]


def test_every_error_has_a_docstring():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.WriteLensError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.__doc__ and len(cls.__doc__.strip()) > 30, f"{cls.__name__} needs a docstring (cause, fix)"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is a dev extra")
def test_mkdocs_build_strict(tmp_path):
    exe = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    res = subprocess.run([exe, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1",
                                                                            "PATH": str(Path(sys.executable).parent)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "errors" / "index.html").exists()
