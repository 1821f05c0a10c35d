"""Where an SAE comes from, and the check that it fits the site an experiment or splice uses it on.

An SAE's ``cfg.metadata`` records (where known) ``model`` (a name), ``model_config_sha256`` (:func:`config_sha256`
of the model's config), ``layer``, ``head`` (or ``heads`` for a stacked SAE) and ``target`` (what it was trained
on: states — ``sampled_positions`` / ``all_positions`` / ``final_state`` — or ``writes``); d_k × d_v are in the
config itself. Extraction records the model's in its metadata and training copies them into the SAE.

:func:`check_sae_provenance` refuses (:class:`~writelens.errors.SAEProvenanceError`) an SAE whose recorded layer,
head, target or model config differs from the use, unless ``allow_foreign=True``. A field the SAE does not record
is not checked (SAEs saved before writelens recorded provenance, or hand-made ones).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from writelens.errors import SAEProvenanceError

__all__ = ["STATE_TARGETS", "config_sha256", "model_provenance", "check_sae_provenance"]

STATE_TARGETS = frozenset({"sampled_positions", "all_positions", "final_state", "states"})
#: config fields that do not change the computation (paths, versions, dtypes, ids, output flags)
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "architectures",
             "use_cache", "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation",
             "_attn_implementation_autoset", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings"}


def config_sha256(model: Any) -> str:
    """SHA256 of the model config's computation-relevant fields (sorted JSON; paths, versions, dtypes left out)."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}

    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in sorted(d.items()) if k not in _VOLATILE}
        return d

    return hashlib.sha256(json.dumps(clean(cfg), sort_keys=True, default=str).encode()).hexdigest()


def model_provenance(model: Any, name: str | None = None) -> dict[str, str]:
    """``{"model": name, "model_config_sha256": …}`` of a model (name: given, else the config's ``_name_or_path``)."""
    name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return {"model": str(name), "model_config_sha256": config_sha256(model)}


def _kind(target: str) -> str:
    return "writes" if target == "writes" else "states" if target in STATE_TARGETS else target


def check_sae_provenance(sae: Any, model: Any, layer: int, head: int, *, target: str | None = "states",
                         allow_foreign: bool = False, what: str = "this experiment") -> None:
    """Refuse an SAE recorded for another layer / head / target / model config than (``layer``, ``head``) of
    ``model`` used on ``target`` (``"states"`` or ``"writes"``; None: only its atoms are used, any target fits);
    ``allow_foreign=True`` skips the check."""
    if allow_foreign or sae is None:
        return
    meta = dict(getattr(sae.cfg, "metadata", {}) or {})
    problems = []
    if "layer" in meta and int(meta["layer"]) != int(layer):
        problems.append(f"layer {meta['layer']} (used at layer {layer})")
    heads = meta.get("heads")
    if "head" in meta and heads is None and int(meta["head"]) != int(head):
        problems.append(f"head {meta['head']} (used at head {head})")
    if heads is not None and int(head) not in [int(h) for h in heads]:
        problems.append(f"heads {list(heads)} (used at head {head})")
    if target is not None and "target" in meta and _kind(str(meta["target"])) != _kind(target):
        problems.append(f"target {meta['target']!r} (used on {target})")
    if meta.get("model_config_sha256") and model is not None:
        mine = config_sha256(model)
        if meta["model_config_sha256"] != mine:
            problems.append(f"model {meta.get('model', '?')!r} with config {str(meta['model_config_sha256'])[:12]}… "
                            f"(this model's config is {mine[:12]}…)")
    if problems:
        raise SAEProvenanceError(
            f"{what} was given an SAE trained for {'; '.join(problems)}. Use the SAE of this site, or pass "
            "allow_foreign_sae=True (options) / allow_foreign=True to use it anyway."
        )
