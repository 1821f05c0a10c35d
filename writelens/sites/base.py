"""What every architecture family shares: the :class:`Site`, one recorded kernel call, edit resolution into state
injections, the per-run session that the kernel interceptors consult, and the family registry.

A family adapter (one file in ``writelens/sites/``) finds the recurrent layers of a live HF model, patches the
module-level kernel functions of its modeling file with interceptors, and turns the kernel's arguments into a
:class:`RecurrentCall` that knows the write, the transition and the read of that family.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from writelens.edits import Edit, edit_positions, edit_rows
from writelens.errors import UnsupportedModelError
from writelens.sites.deltas import edit_delta
from writelens.sites.prefix import continue_rows as _continue_rows
from writelens.sites.prefix import record_native as _record_native
from writelens.sites.session import (  # noqa: F401  (re-exported: the families import them from here)
    Injection,
    RunSession,
    active_session,
    current_layer,
    current_module,
    session_scope,
    track_layers,
)


@dataclass(frozen=True, order=True)
class Site:
    """One (layer, head) that owns a matrix state ``S`` of shape ``(d_k, d_v)``.

    ``layer`` is the model's own layer index (``model.model.layers[layer]``); ``head`` is the value head.
    """

    layer: int
    head: int
    d_k: int
    d_v: int
    family: str


class WriteFactors(NamedTuple):
    """Everything one site's kernel used, per position (role order: key side d_k, value side d_v).

    The write at t is ``coef[:, t] · key[:, t] ⊗ value[:, t]`` (GDN: coef = β); the transition decays by
    ``alpha = exp(g)`` (GDN also erases along ``key``); the read is ``o_t = scale · S_tᵀ query[:, t]``.
    """

    key: Float[Tensor, "B T d_k"]
    value: Float[Tensor, "B T d_v"]
    beta: Float[Tensor, "B T"]
    g: Float[Tensor, "B T"]
    alpha: Float[Tensor, "B T"]
    query: Float[Tensor, "B T d_k"]
    scale: float
    output: Float[Tensor, "B T d_v"]

    @property
    def coef(self) -> Tensor:
        """The scalar of the write (β for GDN)."""
        return self.beta


class RecurrentCall(ABC):
    """One call of a layer's recurrent kernel over positions ``[offset, offset + T)``.

    Subclasses hold the kernel's own arguments and implement the family's write, read and the exact linear
    propagation of a state perturbation through the transitions (using the model's own kernel where possible).
    """

    offset: int
    batch_size: int
    length: int
    num_heads: int
    d_k: int
    d_v: int

    @abstractmethod
    def write_factors(self, rows: Tensor, head: int, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Native write at local position t: (key [n,d_k], value [n,d_v], coef [n]), write = coef·key⊗value."""

    @abstractmethod
    def read_vector(self, rows: Tensor, head: int, t: int) -> tuple[Tensor, float]:
        """The read at local t: (query [n, d_k], scale) with o_t = scale · S_tᵀ query (the S-dependent part)."""

    @abstractmethod
    def propagate(
        self, injections: list[Injection], heads: list[int]
    ) -> tuple[Float[Tensor, "B T h d_v"], Float[Tensor, "B h d_k d_v"]]:
        """Exact effect of ``injections`` (absolute positions inside this call) on the head outputs of ``heads``
        (δo, zero before the first injection) and on the final state (δS_end)."""

    @abstractmethod
    def factors(self, head: int) -> WriteFactors:
        """All per-position quantities of ``head`` over this call."""

    @abstractmethod
    def state_at(self, head: int, t: int) -> Float[Tensor, "B d_k d_v"]:
        """Exact state after the write (and any recorded edit) at local position t."""

    # ---- exact states: cached boundary states + a forward sweep ---------------------------------------------

    STATE_CHUNK: ClassVar[int] = 64  # spacing of cached boundary states

    def _start_state(self, key: Any) -> Tensor:
        """The state before local position 0 for ``key`` (a head, or a tuple of heads)."""
        raise NotImplementedError

    def _advance(self, key: Any, state: Tensor, t0: int, t1: int, rows: Tensor | None = None) -> Tensor:
        """The state after local position t1−1 given the state after t0−1 (recorded edits included); ``rows``:
        only those batch rows (``state`` holds them; given only for calls without recorded edits)."""
        raise NotImplementedError

    def states_for_rows(self, key: Any, t: int, rows: Tensor) -> Tensor:
        """The state for ``key`` after local position t of batch ``rows`` only: the nearest chunk-boundary state
        (swept once for every row and cached, see :meth:`_swept_state`) advanced for ``rows`` alone. Equal to
        ``_swept_state(key, t)[rows]``; what continuing many edited rows from one native pass needs."""
        chunk = self.STATE_CHUNK
        b = ((t + 1) // chunk) * chunk - 1  # the last boundary at or before t
        if getattr(self, "injections", None) or b == t:
            return self._swept_state(key, t)[rows]
        base = self._swept_state(key, b)[rows] if b >= 0 else self._start_state(key)[rows]
        return self._advance(key, base, b + 1, t + 1, rows)

    def _swept_state(self, key: Any, t: int) -> Tensor:
        """State after local position t for ``key``: starts from the nearest cached boundary state (or the last
        state asked for, so ascending sweeps are linear in T) and advances with :meth:`_advance`, caching every
        boundary it crosses. Families implement ``_start_state`` and ``_advance``."""
        if not hasattr(self, "_boundary"):
            self._boundary: dict[Any, dict[int, Tensor]] = {}
            self._last: dict[Any, tuple[int, Tensor]] = {}
        chunk = self.STATE_CHUNK
        cache = self._boundary.setdefault(key, {})
        known = [p for p in cache if p <= t]
        cur = max(known) if known else -1
        state = cache[cur] if known else self._start_state(key)
        last = self._last.get(key)
        if last is not None and cur < last[0] <= t:
            cur, state = last
        while (cur + 1) // chunk < (t + 1) // chunk:
            nxt = ((cur + 1) // chunk + 1) * chunk - 1
            state = self._advance(key, state, cur + 1, nxt + 1)
            cur = nxt
            cache[cur] = state
        if cur < t:
            state = self._advance(key, state, cur + 1, t + 1)
        self._last[key] = (t, state)
        return state

    # ---- helpers shared by families ------------------------------------------------------------------------

    def resolve(self, edit: Edit) -> list[Injection]:
        """Turn one edit into injections for the positions of this call (none if it touches none of them)."""
        rows = torch.tensor(edit_rows(edit, self.batch_size), dtype=torch.long)
        with_read = edit.timing == "with_read"
        out: list[Injection] = []
        for pos in edit_positions(edit):
            t = pos - self.offset
            if not 0 <= t < self.length:
                continue
            key, value, coef = self.write_factors(rows, edit.head, t)
            native = coef[:, None, None] * key[:, :, None] * value[:, None, :]
            native_norm = coef.abs() * key.norm(dim=-1) * value.norm(dim=-1)
            delta = self._edit_delta(edit, native, native_norm, key, value, rows, t)
            out.append(Injection(pos, edit.head, rows, delta.float(), with_read))
        return out

    def _edit_delta(self, edit: Edit, native: Tensor, native_norm: Tensor, key: Tensor, value: Tensor, rows: Tensor,
                    t: int) -> Tensor:
        return edit_delta(self, edit, native, native_norm, key, value, rows, t)


# ---- adapters and registry ---------------------------------------------------------------------------------------


class FamilyAdapter(ABC):
    """Binds writelens to one architecture family of live HF models.

    A new family is one file in ``writelens/sites/`` defining a :class:`RecurrentCall` subclass (write, read,
    exact propagation, states), an interceptor for the family's kernel, and an adapter registered with
    :func:`register_family`. The defaults below fit HF models that take ``past_key_values`` and keep recurrent
    layers in a ``DynamicCache``; override them otherwise.
    """

    family: ClassVar[str]
    #: whether edited runs may continue from a native pass (``record_native`` / ``continue_rows``, ``writelens.fastpath``)
    supports_prefix_reuse: ClassVar[bool] = True
    #: whether the mixer calls ``write_sites`` trace points (nnsight tracing, ``writelens.sites.points``)
    supports_trace_points: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter can wrap ``model``."""

    # Adapters set ``_layers`` (every decoder layer), ``_modules`` (layer index → recurrent mixer) and
    # ``num_heads``, ``d_k``, ``d_v`` in ``__init__``; the properties below read them.
    _layers: Any
    _modules: dict[int, nn.Module]
    num_heads: int
    d_k: int
    d_v: int

    @property
    def layers(self) -> Any:
        """Every decoder layer (recurrent or not), indexed by the model's own layer index."""
        return self._layers

    @property
    def layer_modules(self) -> dict[int, nn.Module]:
        """Model layer index → the recurrent mixer module of that layer (hooked to know the current layer)."""
        return self._modules

    @property
    def sites(self) -> list[Site]:
        """Every (layer, head) write site, in layer then head order."""
        return [Site(i, h, self.d_k, self.d_v, self.family) for i in self._modules for h in range(self.num_heads)]

    @property
    def num_layers(self) -> int:
        """All decoder layers (recurrent and not)."""
        return len(self.layers)

    @abstractmethod
    def install(self) -> None:
        """Patch the kernel functions with interceptors (idempotent)."""

    @abstractmethod
    def oracle_kernel(self) -> Any:
        """The float64 per-token reference kernel, a drop-in for the intercepted kernel that also takes
        ``injections`` and ``offset``."""

    @abstractmethod
    def check_call(self, call: RecurrentCall) -> float:
        """Relative error between the oracle on a captured call's arguments and the kernel's own output."""

    @abstractmethod
    def hf_state(self, call: RecurrentCall, t: int) -> Tensor:
        """All heads' states after local position t, in the layout the HF cache stores."""

    def conv_kernel_size(self, layer: int) -> int:
        """Width of the layer's causal conv (its cache keeps that many pre-conv columns)."""
        return int(self.layer_modules[layer].conv_kernel_size)

    def new_cache(self) -> Any:
        """An empty HF cache for this model."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def cache_length(self, cache: Any) -> int:
        """How many tokens an HF cache holds. A cache of only linear-attention layers (an all-GDN Qwen3.5) does not
        count tokens in transformers (``get_seq_length`` raises), so :meth:`forward` counts them on the cache."""
        if _linear_only(cache):
            return int(getattr(cache, _SEEN, 0))
        return int(cache.get_seq_length())

    # ---- the readout: from the kernel outputs o to the mixer's output (attribution's direct path) ----------------

    @property
    def final_norm(self) -> nn.Module:
        """The norm applied to the residual stream before the unembedding."""
        raise UnsupportedModelError(f"the {self.family} adapter does not name its final norm.")

    def readout_inputs(self, layer: int) -> contextlib.AbstractContextManager[dict[str, Tensor]]:
        """A context manager yielding a dict that forwards run inside the block fill with the S-independent inputs
        of layer ``layer``'s readout (gates ...), each [B, T, ...] as :meth:`readout` takes them per position."""
        raise UnsupportedModelError(f"the {self.family} adapter has no readout description.")

    def readout(self, layer: int, outputs: Float[Tensor, "N H d_v"], inputs: dict[str, Tensor]
                ) -> Float[Tensor, "N d_model"]:
        """The mixer's output at N positions as a function of every head's kernel output o (``outputs``), the
        other readout inputs held at their recorded values (``inputs``, each indexed to the same N positions),
        up to terms that do not depend on o. Differentiable; used linearised (JVP) by the attribution."""
        raise UnsupportedModelError(f"the {self.family} adapter has no readout description.")

    def record_native(self, input_ids: Tensor, layers: Any, logits_to_keep: int = 0) -> Any:
        """One native forward over ``input_ids`` [N, T] keeping what edited rows whose lowest edited layer is one of
        ``layers`` need to continue from any position (``writelens.sites.prefix``: an HF ``DynamicCache`` built
        at the first edit); a family whose cache that builder cannot make overrides this and :meth:`continue_rows`."""
        return _record_native(self, input_ids, layers, logits_to_keep)

    def continue_rows(self, record: Any, src: Tensor, s0: int, low: int, edits: list[Edit],
                      logits_to_keep: int = 0, stop: int = 0) -> Tensor:
        """Logits [n, T − s0, V] of the native rows ``src`` of ``record`` with ``edits`` (``batch`` = index into
        ``src``; none before position ``s0`` or below layer ``low``) applied: only positions ≥ ``s0`` of layers
        ≥ ``low`` are computed, up to ``stop`` (0: the end), the unembedding only for the last ``logits_to_keep``
        when that is > 0."""
        return _continue_rows(self, record, src, s0, low, edits, logits_to_keep, stop)

    @functools.cached_property
    def cache_keyword(self) -> str:
        """The keyword the model's forward takes its cache by: ``cache`` (transformers ≥ 5.2x renamed
        ``past_key_values`` / ``cache_params`` to it and drops the old names in 5.40), else the old name."""
        params = inspect.signature(type(self.model).forward).parameters
        return next((n for n in ("cache", "past_key_values", "cache_params") if n in params), "past_key_values")

    def forward(self, input_ids: Tensor, cache: Any = None, use_cache: bool = False,
                position_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                logits_to_keep: int | Tensor = 0) -> Any:
        """Call the model; returns its output (with ``.logits``; of the last ``logits_to_keep`` positions only when
        that is an int > 0, of the positions it lists when it is a 1-D LongTensor)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, self.cache_keyword: cache, "use_cache": use_cache,
                                  **logits_kwarg(logits_to_keep, input_ids.device)}
        if cache is None and use_cache:
            cache = kwargs[self.cache_keyword] = self.new_cache()
        linear_only = _linear_only(cache)
        if linear_only and position_ids is None:
            # transformers derives positions from cache.get_seq_length(), which a cache without attention layers
            # cannot answer; the positions only feed rotary embeddings of attention layers, so they are bookkeeping
            seen = getattr(cache, _SEEN, 0)
            position_ids = torch.arange(seen, seen + input_ids.shape[1], device=input_ids.device)
            position_ids = position_ids[None].expand(input_ids.shape[0], -1)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if linear_only:
            # the full-attention mask builder asks the cache for its length too; no layer uses that mask here
            pad = None
            if attention_mask is not None and input_ids.shape[1] > 1 and not bool((attention_mask == 1).all()):
                pad = attention_mask[:, -input_ids.shape[1]:].contiguous()  # transformers' recurrent padding mask
            kwargs["attention_mask"] = {"full_attention": None, "linear_attention": pad}
        elif attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        out = self.model(**kwargs)
        if linear_only and use_cache:
            setattr(cache, _SEEN, int(position_ids.reshape(-1, position_ids.shape[-1])[0, -1]) + 1)
        return out


_SEEN = "_writelens_seen_tokens"  # token count kept on caches that transformers cannot count (see cache_length)


def logits_kwarg(logits_to_keep: int | Tensor, device: Any) -> dict[str, Any]:
    """The model's ``logits_to_keep`` keyword (none when 0): an int keeps the last positions, a 1-D LongTensor the
    positions it lists (transformers and rwkv7-hf both take either)."""
    if isinstance(logits_to_keep, Tensor):
        return {"logits_to_keep": logits_to_keep.long().to(device)}
    return {"logits_to_keep": int(logits_to_keep)} if logits_to_keep else {}


def _linear_only(cache: Any) -> bool:
    """True for a transformers ``Cache`` whose layers are all linear-attention (no layer that counts tokens)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    from transformers.cache_utils import CacheLayerMixin

    return not any(isinstance(layer, CacheLayerMixin) for layer in layers)


_FAMILIES: list[type[FamilyAdapter]] = []


def register_family(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make an adapter discoverable by :func:`adapter_for`."""
    _FAMILIES.append(cls)
    return cls


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError`."""
    import writelens.sites  # noqa: F401  (imports every family file, which registers it)

    for cls in _FAMILIES:
        if cls.matches(model):
            return cls(model)
    known = "; ".join(f"{c.family} ({c.__doc__.strip().splitlines()[0] if c.__doc__ else c.__name__})"
                      for c in _FAMILIES)
    raise UnsupportedModelError(
        f"writelens has no adapter for {type(model).__name__}. Supported families: {known}. "
        "Pass a model of one of these classes (or add an adapter file under writelens/sites/)."
    )
