"""Write-site adapters, one file per architecture family; importing this package registers them all."""

from writelens.sites import (  # each family file registers itself on import
    gdn,  # noqa: F401
    mamba2,  # noqa: F401
    rwkv7,  # noqa: F401
)
from writelens.sites.base import FamilyAdapter, Injection, RecurrentCall, Site, WriteFactors, adapter_for

__all__ = ["FamilyAdapter", "Injection", "RecurrentCall", "Site", "WriteFactors", "adapter_for"]
