"""Fixtures shared across test modules (``pytestmark = pytest.mark.usefixtures(...)`` opts a module in)."""

from models import one_torch_thread  # noqa: F401  (a module-scoped fixture, used by name)
