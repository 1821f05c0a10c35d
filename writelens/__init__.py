"""writelens: read and edit what recurrent language models write into their matrix-valued state.

Quick start::

    import writelens as wl
    lens = wl.WriteLens.from_pretrained(wl.zoo.path("gdn-tiny"))
    out = lens.run(ids, cache=True)
    w = out.cache.write(layer=0, head=1)          # factors: w.key [B,T,d_k], w.value [B,T,d_v], w.beta [B,T]
    S = out.cache.state(layer=0, head=1, pos=10)  # [B, d_k, d_v], exact
    edited = lens.run(ids, edits=[wl.Delete(0, 1, pos=10)])

Names are imported lazily so ``import writelens`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    # write sites and edits
    "WriteLens": ("writelens.lens", "WriteLens"),
    "RunOutput": ("writelens.lens", "RunOutput"),
    "Site": ("writelens.sites.base", "Site"),
    "WriteCache": ("writelens.cache", "WriteCache"),
    "WriteFactors": ("writelens.cache", "WriteFactors"),
    "Delete": ("writelens.edits", "Delete"),
    "Replace": ("writelens.edits", "Replace"),
    "Add": ("writelens.edits", "Add"),
    "RandomAtom": ("writelens.edits", "RandomAtom"),
    "Install": ("writelens.edits", "Install"),
    # SAE stack
    "extract": ("writelens.extraction", "extract"),
    "load_sae": ("writelens.sae", "load_sae"),
    "SAE": ("writelens.sae", "SAE"),
    # subpackages
    "errors": ("writelens.errors", None),
    "zoo": ("writelens.zoo", None),
    "sae": ("writelens.sae", None),
    "experiments": ("writelens.experiments", None),
    "plot": ("writelens.plot", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'writelens' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
