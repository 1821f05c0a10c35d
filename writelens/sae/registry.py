"""Architecture registry: ``cfg.architecture`` names the class that a saved config rebuilds.

It sits above the architectures (it imports them; they do not import it): the shipped classes carry their
name as ``architecture`` and are registered here; new ones register with :func:`register_architecture`.
"""

from __future__ import annotations

from collections.abc import Callable

from writelens.errors import SAEConfigError
from writelens.sae.base import SAE
from writelens.sae.bilinear import BilinearSAE
from writelens.sae.config import SAEConfig
from writelens.sae.flat import FlatSAE
from writelens.sae.matrix import MatrixSAE

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (FlatSAE, MatrixSAE, BilinearSAE)}


def register_architecture(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator: make ``SAEConfig(architecture=name)`` build this class."""

    def register(cls: type[SAE]) -> type[SAE]:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
            raise SAEConfigError(f"SAE architecture {name!r} is already registered by {ARCHITECTURES[name]}.")
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls

    return register


def sae_class(name: str) -> type[SAE]:
    """The class registered under ``name``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise SAEConfigError(
            f"unknown SAE architecture {name!r}; registered: {sorted(ARCHITECTURES)}. Register new ones with "
            "@writelens.sae.register_architecture(name)."
        ) from None


def build_sae(cfg: SAEConfig, *, seed: int | None = None) -> SAE:
    """A freshly initialised SAE of the architecture ``cfg.architecture`` (``seed`` makes init reproducible)."""
    return sae_class(cfg.architecture)(cfg, seed=seed)
