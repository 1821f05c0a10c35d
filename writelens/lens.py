"""``WriteLens``: the write-site view of a live HF model — capture, exact states, propagating edits, generation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from writelens import fastpath, lens_inputs
from writelens.cache import WriteCache
from writelens.edits import Edit, edit_positions
from writelens.errors import (
    InputError,
    MissingTokenizerError,
    ModelLoadError,
    NonFiniteError,
    NotRecurrentLayerError,
    PositionOutOfRangeError,
    SelfCheckError,
    SiteOutOfRangeError,
    UnsupportedModelError,
)
from writelens.sites.base import RunSession, Site, adapter_for, session_scope
from writelens.validate import as_int, check_device, check_float_dtype, check_int

__all__ = ["WriteLens", "RunOutput", "GenerateOutput"]


@dataclass
class RunOutput:
    """``logits`` [B, T, V] ([B, k, V] with ``logits_to_keep=k``); ``cache``: the :class:`WriteCache` (if ``cache=True``); ``past_key_values``: the HF
    cache after the run (if ``use_cache=True``), edits included, ready to continue from."""

    logits: Float[Tensor, "B T V"]
    cache: WriteCache | None = None
    past_key_values: Any = None


@dataclass
class GenerateOutput:
    """``sequences`` [B, T + N] (prompt and continuation); ``new_tokens`` [B, N]; ``logits`` [B, N, V] of each
    generated step (the distribution the token was chosen from); ``past_key_values`` the cache after the last step."""

    sequences: Int[Tensor, "B L"]
    new_tokens: Int[Tensor, "B N"]
    logits: Float[Tensor, "B N V"]
    past_key_values: Any = None


def _finite(logits: Tensor) -> Tensor:
    if not torch.isfinite(logits).all():
        raise NonFiniteError("The edited run produced NaN/inf logits; an edit's magnitude is probably enormous — "
                             "check Replace/Add scales and Install magnitudes.")
    return logits


def clone_cache(cache: Any) -> Any:
    """An independent copy of an HF cache (recurrent, conv and attention parts), to branch continuations."""
    return copy.deepcopy(cache)


class WriteLens:
    """Wrap a live HF model (its modules are used as they are; nothing is re-implemented).

    Args:
        model: ``Qwen3_5ForCausalLM``, ``Qwen3_5ForConditionalGeneration`` (text part), ``Qwen3NextForCausalLM``.
        tokenizer: optional, kept for convenience (``lens.tokenizer``).
        self_check: run one short forward and verify the captured quantities reproduce the layer's own kernel
            output (raises :class:`SelfCheckError` if not).
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, self_check: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter_for(model)
        self.adapter.install()
        self._sites = self.adapter.sites
        self.recurrent_layers = sorted(self.adapter.layer_modules)
        if self_check:
            self.self_check()

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: torch.dtype | str = torch.float32, tokenizer: bool = True,
                        self_check: bool = True, **hf_kwargs: Any) -> WriteLens:
        """Load with ``AutoModelForCausalLM.from_pretrained`` (hub id or local folder) and wrap it.

        A path that does not exist (absolute, ``./``, ``../``, ``~``, or a file) raises :class:`ModelLoadError`
        without asking the hub; a name the hub cannot resolve raises it too (the HF message is kept as the cause).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (isinstance(dtype, str) and dtype == "auto"):
            dtype = check_float_dtype(dtype, "WriteLens.from_pretrained dtype", InputError)
        local = Path(str(name_or_path)).expanduser()
        looks_local = str(name_or_path).startswith(("/", "./", "../", "~", ".\\")) or str(name_or_path).count("/") > 1
        if local.is_file() or (looks_local and not local.is_dir()):
            what = "is a file" if local.is_file() else "does not exist"
            raise ModelLoadError(f"WriteLens.from_pretrained({str(name_or_path)!r}): the path {what}; pass a folder "
                                 "written by save_pretrained (config.json + weights), a hub id, or load a zoo model "
                                 "with wl.zoo.load(name).")
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ModelLoadError(f"WriteLens.from_pretrained({str(name_or_path)!r}): the folder has no config.json, "
                                     "so it is not a local model folder; pass a folder written by save_pretrained.")
            name_or_path = str(local)
        device_map = hf_kwargs.get("device_map")
        if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            check_device(device_map, "device_map")
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **hf_kwargs).eval()
        except OSError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise ModelLoadError(f"WriteLens.from_pretrained({str(name_or_path)!r}) found no model: it is neither a "
                                 f"local model folder nor a reachable hub id ({first}).") from err
        tok = None
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if local.is_dir() and not any((local / f).exists() for f in tokenizer_files):
            tokenizer = False  # a local folder without tokenizer files: none to load
        if tokenizer:
            try:
                tok = AutoTokenizer.from_pretrained(name_or_path)
            except (OSError, ValueError):
                tok = None
        return cls(model, tokenizer=tok, self_check=self_check)

    def __repr__(self) -> str:
        heads = len(self._sites) // max(len(self.recurrent_layers), 1)
        return (f"WriteLens({type(self.model).__name__}, family={self.adapter.family!r}, "
                f"recurrent layers={self.recurrent_layers}, heads/layer={heads})")

    # ---- sites ----------------------------------------------------------------------------------------------------

    @property
    def sites(self) -> list[Site]:
        """Every write site ``Site(layer, head, d_k, d_v, family)``."""
        return list(self._sites)

    def site(self, layer: int, head: int) -> Site:
        """The ``Site`` of (``layer``, ``head``); a named error when it is not a write site of this model."""
        self._check_site(layer, head)
        return next(s for s in self._sites if s.layer == int(layer) and s.head == int(head))

    def _check_site(self, layer: int, head: int) -> None:
        layer = as_int(layer, "layer", SiteOutOfRangeError)
        head = as_int(head, "head", SiteOutOfRangeError)
        if not 0 <= layer < self.adapter.num_layers:
            raise SiteOutOfRangeError(
                f"layer {layer} is outside the model's {self.adapter.num_layers} layers; "
                f"recurrent layers are {self.recurrent_layers}."
            )
        if layer not in self.adapter.layer_modules:
            raise NotRecurrentLayerError(
                f"layer {layer} is not a recurrent layer (it holds no matrix state); "
                f"choose one of {self.recurrent_layers}."
            )
        n = sum(1 for s in self._sites if s.layer == layer)
        if not 0 <= head < n:
            raise SiteOutOfRangeError(f"head {head} is outside layer {layer}'s {n} value heads (0..{n - 1}).")

    def _check_edits(self, edits: Any, batch_size: int, length: int, mask: Tensor | None = None) -> list[Edit]:
        return lens_inputs.check_edits(self, edits, batch_size, length, mask)

    @property
    def vocab_size(self) -> int:
        """The number of token ids the model's input embedding accepts."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    def _ids(self, input_ids: Any, what: str = "input_ids") -> Tensor:
        return lens_inputs.check_ids(input_ids, self.vocab_size, what).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- running --------------------------------------------------------------------------------------------------

    def run(self, input_ids: Int[Tensor, "B T"], *, cache: bool = False,
            sites: Sequence[tuple[int, int] | Site] | None = None, edits: Sequence[Edit] = (),
            attention_mask: Tensor | None = None, use_cache: bool = False, oracle: bool = False,
            logits_to_keep: int = 0, _fast: bool = True) -> RunOutput:
        """One forward pass, optionally capturing write sites and applying edits.

        Args:
            input_ids: [B, T] (or [T]).
            cache: record the write sites (``out.cache``).
            sites: which (layer, head) pairs (or ``Site``\ s, or layer ints) to record (None: all); all heads of a named
                layer are recorded. A string or a malformed item raises :class:`InputError`.
            edits: ``wl.Delete`` / ``Replace`` / ``Add`` / ``RandomAtom`` / ``Install`` (a list, or one edit alone);
                composed exactly (at most one write-replacing edit per site, position and row).
            attention_mask: [B, T] of 0 / 1 (0: padding); an edit at a padded position raises
                :class:`PositionOutOfRangeError`.
            use_cache: also return the HF cache (``out.past_key_values``) to continue or branch from.
            oracle: run every recurrent layer with the float64 per-token reference recurrence, edits applied
                directly to the state (slow; the ground truth the fast path is tested against).
            logits_to_keep: 0 (all positions) or k in 1..T: ``out.logits`` holds the last k positions only,
                [B, k, V], and the unembedding runs on those alone (transformers' keyword, int form). With a
                248k-token vocabulary the logits are 1 MB per position: pass 1 when only the next token matters.
        Returns:
            :class:`RunOutput`. The model and any cache you hold are unchanged.
        """
        ids = self._ids(input_ids)
        keep = check_int(logits_to_keep, "logits_to_keep", InputError, 0, ids.shape[1])
        attention_mask = lens_inputs.check_mask(attention_mask, ids)
        attention_mask = None if attention_mask is None else attention_mask.to(self.device)
        edits = self._check_edits(edits, *ids.shape, mask=None if attention_mask is None else attention_mask.cpu())
        if (edits and _fast and self.adapter.supports_prefix_reuse and not (cache or use_cache or oracle)
                and attention_mask is None):
            return RunOutput(logits=_finite(fastpath.run_with_prefix_reuse(self, ids, edits, tail=keep or None)))
        capture = frozenset()
        if sites is not None and (isinstance(sites, (str, bytes, Site)) or not hasattr(sites, "__iter__")):
            raise InputError(f"sites={sites!r} is not a list of sites; pass e.g. sites=[(0, 1)] or None for all.")
        if cache:
            capture = frozenset(self.recurrent_layers if sites is None else [self._site_layer(s) for s in sites])
        session = RunSession(edits=edits, capture=capture,
                             kernel_override=self.adapter.oracle_kernel() if oracle else None)
        past = self.adapter.new_cache() if use_cache else None
        with torch.no_grad(), session_scope(session, self.adapter.layer_modules):
            out = self.adapter.forward(ids, cache=past, use_cache=use_cache, attention_mask=attention_mask,
                                       logits_to_keep=keep)
        logits = _finite(out.logits) if edits else out.logits
        wcache = None
        if cache:
            calls = {layer: c[0] for layer, c in session.calls.items()}
            wcache = WriteCache(calls, self._sites, self.recurrent_layers, self.adapter.num_layers)
        return RunOutput(logits=logits, cache=wcache, past_key_values=past)

    def _site_layer(self, s: tuple[int, int] | Site | int) -> int:
        layer, head = lens_inputs.site_pair(s, Site)
        self._check_site(layer, head)
        return int(layer)

    # ---- generation -----------------------------------------------------------------------------------------------

    def generate(self, input_ids: Int[Tensor, "B T"], *, edits: Sequence[Edit] = (), max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None, past_key_values: Any = None, oracle: bool = False) -> GenerateOutput:
        """Greedy or sampled continuation with edits.

        Edits at prompt positions act during the prefill and persist through the cache (the final recurrent state
        carries the perturbation; later layers' conv and attention caches are computed from the edited stream);
        edits at generated positions (``T ≤ pos < T + max_new_tokens``) apply when that token is processed.
        ``past_key_values``: an HF cache holding a prefix; it is cloned, never modified, and ``input_ids`` are then the
        tokens after that prefix (positions count from the prefix start). ``oracle``: as in :meth:`run`.
        ``max_new_tokens`` ≥ 1, ``top_k`` in 1..vocab (or None), ``temperature`` > 0 when sampling; otherwise
        :class:`InputError`.
        """
        ids = self._ids(input_ids)
        B, T = ids.shape
        n_logits = int(self.model.get_output_embeddings().weight.shape[0])
        max_new_tokens, top_k, seed = lens_inputs.check_generate_args(max_new_tokens, do_sample, temperature, top_k,
                                                                      seed, n_logits)
        if past_key_values is not None and not hasattr(past_key_values, "get_seq_length"):
            raise InputError(f"past_key_values is a {type(past_key_values).__name__}, not a transformers cache; pass "
                             "the past_key_values of lens.run(..., use_cache=True) or of a GenerateOutput.")
        past = self.adapter.new_cache() if past_key_values is None else clone_cache(past_key_values)
        start = self.adapter.cache_length(past) if past_key_values is not None else 0
        edits = self._check_edits(edits, B, start + T + max_new_tokens)
        early = [e for e in edits if min(edit_positions(e)) < start]
        if early:
            raise PositionOutOfRangeError(
                f"{type(early[0]).__name__} at position {min(edit_positions(early[0]))} lies inside the supplied "
                f"prefix cache (positions 0..{start - 1}), which is already computed; edit the prefix run instead "
                "(lens.run(prefix, edits=..., use_cache=True)) and continue from its past_key_values."
            )
        gen = torch.Generator(device="cpu").manual_seed(int(seed)) if seed is not None else None
        new_tokens, step_logits = [], []
        chunk, pos = ids, start
        for _ in range(max_new_tokens):
            session = RunSession(edits=edits, start_pos=pos,
                                 kernel_override=self.adapter.oracle_kernel() if oracle else None)
            with torch.no_grad(), session_scope(session, self.adapter.layer_modules):
                out = self.adapter.forward(chunk, cache=past, use_cache=True)
            logits = out.logits[:, -1].float()
            if not torch.isfinite(logits).all():
                raise NonFiniteError("Generation produced NaN/inf logits; an edit's magnitude is probably enormous.")
            step_logits.append(logits)
            pos += chunk.shape[1]
            nxt = self._pick(logits, do_sample, temperature, top_k, gen)
            new_tokens.append(nxt)
            chunk = nxt[:, None]
        new = torch.stack(new_tokens, 1) if new_tokens else ids.new_zeros(B, 0)
        lg = torch.stack(step_logits, 1) if step_logits else torch.zeros(B, 0, 0)
        return GenerateOutput(torch.cat([ids, new], 1), new, lg, past)

    @staticmethod
    def _pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, gen) -> Tensor:
        if not do_sample:
            return logits.argmax(-1)
        z = logits / float(temperature)
        if top_k is not None:
            kth = z.topk(int(top_k), dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        probs = torch.softmax(z, -1).cpu()
        return torch.multinomial(probs, 1, generator=gen).flatten().to(logits.device)

    clone_cache = staticmethod(clone_cache)

    # ---- nnsight tracing ------------------------------------------------------------------------------------------

    @property
    def nnsight(self) -> Any:
        """An nnsight wrapper of the same HF model, with the write-site points armed: ``TransformersModel``
        (text generation; nnsight's ``LanguageModel``) when ``lens.tokenizer`` is set (string prompts and traced generation), else ``NNsight`` (token-id tensors).

        Traced generation: ``with lens.nnsight.generate(ids, max_new_tokens=n) as tracer:`` then
        ``for step in tracer.iter[:n]:`` — the prefill runs the chunk kernel, each later step the recurrent kernel,
        and the points fire at both (nnsight must see the ``with`` in your code, so call it directly).
        """
        self.arm_trace_points(True)
        if getattr(self, "_nnsight", None) is None:
            if self.tokenizer is not None:
                try:  # nnsight ≥ 0.8: LanguageModel is a deprecated alias of this
                    from nnsight.modeling.transformers import TransformersModel
                except ImportError:  # pragma: no cover - older nnsight
                    from nnsight import LanguageModel as TransformersModel

                self._nnsight = TransformersModel(self.model, tokenizer=self.tokenizer, task="text-generation")
            else:
                from nnsight import NNsight

                self._nnsight = NNsight(self.model)
        return self._nnsight

    def require_tokenizer(self, what: str) -> Any:
        """``lens.tokenizer``, or :class:`MissingTokenizerError` naming ``what`` needed it."""
        if self.tokenizer is None:
            raise MissingTokenizerError(
                f"{what} needs a tokenizer; create the lens with WriteLens(model, tokenizer=tok) or "
                "WriteLens.from_pretrained(path) on a folder that has one."
            )
        return self.tokenizer

    def arm_trace_points(self, armed: bool = True) -> None:
        """Make the recurrent layers call their ``write_sites`` points (``lens.trace`` does this for you; a plain
        ``nnsight.LanguageModel`` over the same HF model needs it once). Disarmed runs pay nothing."""
        for module in self.adapter.layer_modules.values():
            module.write_sites.armed = armed

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """``with lens.trace(input_ids) as tracer:`` — nnsight's trace with the write-site points armed.

        Inside, ``lens.points(layer)`` is the layer's ``write_sites`` envoy: ``.query``, ``.key``, ``.value``,
        ``.beta``, ``.gate``, ``.write``, ``.read`` (the head output o), ``.state`` each have ``.output`` to read (``.save()``) or
        assign (heads on axis 2). Request them in that order within a layer, and layers in model order.
        """
        first = inputs[0] if inputs else None
        if hasattr(first, "keys") and "input_ids" in first:  # a tokenizer's BatchEncoding / a dict of tensors
            first = first["input_ids"]
        if isinstance(first, str) or (isinstance(first, (list, tuple)) and first and isinstance(first[0], str)):
            self.require_tokenizer("lens.trace with text")
        elif isinstance(first, (Tensor, list, tuple)):
            self._ids(first)  # checked only (empty, not integer, outside the vocabulary); nnsight gets it as is
        self.arm_trace_points(True)
        return self.nnsight.trace(*inputs, **kwargs)

    def points(self, layer: int) -> Any:
        """The nnsight envoy of layer ``layer``'s write sites (use inside ``lens.trace``)."""
        self._check_site(layer, 0)
        if not self.adapter.supports_trace_points:
            raise UnsupportedModelError(
                f"The {self.adapter.family} family has no nnsight trace points; use lens.run(cache=True) to read "
                "sites and writelens edits to change them."
            )
        target = self.adapter.layer_modules[layer].write_sites
        path = next(name for name, mod in self.model.named_modules() if mod is target)
        envoy = self.nnsight
        for part in path.split("."):
            envoy = getattr(envoy, part)
        return envoy

    # ---- self-check -----------------------------------------------------------------------------------------------

    def self_check(self, seq_len: int = 12, seed: int = 0) -> None:
        """Run a short forward; verify every recurrent layer called the intercepted kernel and that the float64
        oracle on the captured arguments reproduces the kernel's output. Raises :class:`SelfCheckError`."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (1, seq_len), generator=gen)
        out = self.run(ids, cache=True)
        missing = [layer for layer in self.recurrent_layers if layer not in out.cache._calls]
        if missing:
            raise SelfCheckError(
                f"Recurrent layers {missing} never called the {self.adapter.family} kernel writelens intercepts; "
                "this transformers version changed the layer's forward. Install a tested transformers (5.x) or "
                "report it."
            )
        dtype = next(self.model.parameters()).dtype
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        for layer, call in out.cache._calls.items():
            err = self.adapter.check_call(call)
            if not err <= tol:
                raise SelfCheckError(
                    f"Layer {layer}: the captured q/k/v/g/beta do not reproduce the kernel output (relative error "
                    f"{err:.2e} > {tol:.0e}); this transformers version computes the layer differently from what "
                    "writelens expects. Install a tested transformers (5.x) or report it."
                )
