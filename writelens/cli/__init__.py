"""The ``writelens`` command line (typer), generated from the config dataclasses.

- :mod:`writelens.cli.base`: the apps, :func:`~writelens.cli.base.command`, errors, model and passage loading;
- :mod:`writelens.cli.options`: typer options from dataclass fields;
- :mod:`writelens.cli.core`: ``zoo list`` / ``zoo path``, ``extract``, ``train``;
- :mod:`writelens.cli.experiments`: ``replace-test``, ``attribute``, ``steer``.

Building the app imports only typer and the torch-free option dataclasses, so ``--help`` is fast; each command
imports what it uses when it runs. Bad arguments exit with code 2 and a message (docs/cli.md).
"""

from __future__ import annotations

from writelens.cli import core, experiments
from writelens.cli.base import app, zoo_app

__all__ = ["app", "zoo_app", "main"]

core.register()
experiments.register()


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="writelens")
