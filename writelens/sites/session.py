"""The per-run session that the kernel interceptors consult, and which recurrent layer is running.

``lens.run`` / a generation step activates a :class:`RunSession` (edits to apply, layers to capture, an optional
kernel override or output hook) with :func:`session_scope`; permanent, computation-free hooks on the recurrent
mixers (:func:`track_layers`) tell the interceptors which layer is running.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor, nn

if TYPE_CHECKING:
    from writelens.edits import Edit

__all__ = ["Injection", "RunSession", "active_session", "session_scope", "track_layers", "current_layer",
           "current_module"]


@dataclass
class Injection:
    """A state perturbation ``ΔS`` added right after the write at absolute position ``pos`` of one head.

    ``rows``: LongTensor [n] of batch rows; ``delta``: [n, d_k, d_v] float32; ``with_read``: whether the read at
    ``pos`` sees it.
    """

    pos: int
    head: int
    rows: Tensor
    delta: Float[Tensor, "n d_k d_v"]
    with_read: bool


_ACTIVE: contextvars.ContextVar[RunSession | None] = contextvars.ContextVar("writelens_session", default=None)


@dataclass
class RunSession:
    """What one ``lens.run`` / generation step asks of the interceptors.

    ``edits``: edits to apply (absolute positions); ``capture``: layer indices whose kernel calls are recorded (in
    ``calls``: layer → the family's ``RecurrentCall`` objects, see ``writelens.sites.base``);
    ``start_pos``: absolute position of the first token of this forward; ``kernel_override``: a callable that
    replaces the kernel (the float64 oracle) or None; ``output_hook``: ``f(layer, o) -> o`` applied to every
    multi-token kernel output o [B, T, H, d_v] (after edits), e.g. to make o a leaf for gradients, or None.
    """

    edits: list[Edit] = field(default_factory=list)
    capture: frozenset[int] = frozenset()
    start_pos: int = 0
    kernel_override: Any = None
    calls: dict[int, list[Any]] = field(default_factory=dict)
    injections: dict[int, list[Injection]] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)
    capture_conv: frozenset[int] = frozenset()
    conv_inputs: dict[int, Tensor] = field(default_factory=dict)
    output_hook: Any = None

    def hook_output(self, layer: int, out: Tensor) -> Tensor:
        """``out`` passed through ``output_hook`` (unchanged when there is none)."""
        return out if self.output_hook is None else self.output_hook(layer, out)

    def edits_for(self, layer: int) -> list[Edit]:
        return [e for e in self.edits if e.layer == layer]

    @property
    def current_layer(self) -> int | None:
        """The recurrent layer whose forward is running now (None between layers)."""
        return current_layer()


def active_session() -> RunSession | None:
    return _ACTIVE.get()


_CURRENT: contextvars.ContextVar[tuple[int, nn.Module] | None] = contextvars.ContextVar("writelens_layer", default=None)


def track_layers(layer_modules: dict[int, nn.Module]) -> None:
    """Register (once per module, permanently) forward pre/post hooks that tell the kernel interceptors which
    recurrent layer is running. The hooks only set a context variable; they change no computation."""
    for idx, mod in layer_modules.items():
        if getattr(mod, "_writelens_layer", None) is not None:
            continue
        mod._writelens_layer = idx

        def enter(module, args, idx=idx):
            _CURRENT.set((idx, module))

        def leave(module, args, output):
            _CURRENT.set(None)

        mod.register_forward_pre_hook(enter)
        mod.register_forward_hook(leave)


def current_layer() -> int | None:
    cur = _CURRENT.get()
    return None if cur is None else cur[0]


def current_module() -> nn.Module | None:
    cur = _CURRENT.get()
    return None if cur is None else cur[1]


@contextlib.contextmanager
def session_scope(session: RunSession, layer_modules: dict[int, nn.Module]) -> Iterator[RunSession]:
    """Activate ``session`` for the forward passes run inside the block."""
    track_layers(layer_modules)
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)
