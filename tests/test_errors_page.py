"""docs/errors.md lists every error and warning of writelens.errors with an example, and every example raises (or
warns) exactly the class it is listed under (docs/errors_examples.py)."""

from __future__ import annotations

import importlib.util
import inspect
import tempfile
from pathlib import Path

import pytest

import writelens.errors as errors

DOCS = Path(__file__).resolve().parents[1] / "docs"
spec = importlib.util.spec_from_file_location("errors_examples", DOCS / "errors_examples.py")
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)

CLASSES = sorted(n for n, c in vars(errors).items() if inspect.isclass(c) and c.__module__ == errors.__name__)


@pytest.fixture(scope="module")
def ns():
    return E.namespace(Path(tempfile.mkdtemp()))


def test_every_class_has_an_example_or_a_reason():
    listed = [n for n, _ in E.EXAMPLES] + list(E.NO_EXAMPLE)
    assert sorted(listed) == CLASSES


def test_the_page_shows_every_class():
    page = (DOCS / "errors.md").read_text()
    missing = [n for n in CLASSES if f"### {n}\n" not in page]
    assert not missing, f"docs/errors.md lacks {missing}: run python docs/errors_examples.py"


@pytest.mark.parametrize("name,code", E.EXAMPLES, ids=[n for n, _ in E.EXAMPLES])
def test_example_raises_its_class(ns, name, code):
    got, message = E.run_example(code, ns)
    assert got == name, f"{code!r} gave {got or 'nothing'}: {message}"
    assert len(message) > 30  # says what was wrong and what to do
