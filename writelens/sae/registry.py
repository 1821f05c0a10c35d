"""Architecture registry: ``cfg.architecture`` names the class that a saved config rebuilds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from writelens.errors import SAEConfigError

if TYPE_CHECKING:
    from writelens.sae.base import SAE
    from writelens.sae.config import SAEConfig

ARCHITECTURES: dict[str, type[SAE]] = {}


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
    import writelens.sae.bilinear  # noqa: F401  (registration side effects)
    import writelens.sae.flat  # noqa: F401
    import writelens.sae.matrix  # noqa: F401

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
