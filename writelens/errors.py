"""Every exception writelens raises on purpose.

Each class documents its cause and the fix; each raise site says what was wrong and what to do.
All derive from :class:`WriteLensError`, so ``except writelens.errors.WriteLensError`` catches them all.
The docs' errors page has one section per class.
"""

from __future__ import annotations


class WriteLensError(Exception):
    """Base class of every writelens error."""


# --- models and sites -------------------------------------------------------------------------------------------


class UnsupportedModelError(WriteLensError, TypeError):
    """The model (or its architecture / transformers version) has no writelens adapter.

    Fix: pass one of the supported HF classes (Qwen3.5, Qwen3-Next, Mamba-2, RWKV-7), or add an adapter file
    under ``writelens/sites/``.
    """


class SelfCheckError(WriteLensError, RuntimeError):
    """The load-time self-check failed: the captured write-site quantities do not reproduce the layer's own
    kernel output. Usually an unknown transformers version changed the layer's forward.

    Fix: install a transformers version writelens was tested with (see README), or report the version.
    """


class NotRecurrentLayerError(WriteLensError, ValueError):
    """A layer index names a layer that holds no matrix state (e.g. a full-attention layer of a hybrid)."""


class SiteOutOfRangeError(WriteLensError, IndexError):
    """A layer or head index is outside the model."""


class PositionOutOfRangeError(WriteLensError, IndexError):
    """A token position is outside the sequence that was run."""


class BatchRowOutOfRangeError(WriteLensError, IndexError):
    """An edit's ``batch=`` row is outside the batch that was run."""


class EditShapeError(WriteLensError, ValueError):
    """An edit's matrix or factors have the wrong shape or dtype for its site."""


class EditConflictError(WriteLensError, ValueError):
    """An edit cannot be applied in the forward that reaches it (e.g. an install along the *next* query at
    the last position of a call, where that query does not exist yet).

    Fix: move the edit, or choose the variant the message names.
    """


class NonFiniteError(WriteLensError, FloatingPointError):
    """NaN or inf where a finite number is needed: in an edited run (usually an edit of enormous magnitude), in
    training data (the message names the shard and rows), in states given to an SAE, in a loaded checkpoint's
    weights, or in a training loss (training stops at that step; the last good checkpoint is kept).

    Fix: find the source the message names (re-extract the shard, lower the learning rate, re-save the SAE).
    """


class MissingTokenizerError(WriteLensError, ValueError):
    """An operation needs a tokenizer (strings in, nnsight's traced generation) and the lens has none."""


class SiteNotCapturedError(WriteLensError, KeyError):
    """A cache was asked for a site that the run did not capture (``sites=`` excluded it)."""


# --- SAEs and checkpoints ---------------------------------------------------------------------------------------


class SAEConfigError(WriteLensError, ValueError):
    """An SAE or trainer configuration is invalid (unknown architecture, k > n_features, ...)."""


class SAEProvenanceError(WriteLensError, ValueError):
    """An SAE recorded for another site, target (states vs writes) or model config than the one it is used on.

    Fix: use the SAE trained for this site, or pass ``allow_foreign_sae=True`` in the experiment's options.
    """


class CheckpointError(WriteLensError, OSError):
    """A checkpoint folder or file is missing, truncated, foreign (not a writelens / reference layout) or does
    not match its config."""


class ChecksumError(CheckpointError):
    """A file's SHA256 does not match the manifest that names it: it was altered or truncated."""


class ExtractionError(WriteLensError, RuntimeError):
    """An extraction run cannot start or resume (mismatched metadata in ``out_dir``, bad target, ...)."""


# --- zoo -------------------------------------------------------------------------------------------------------


class ZooModelNotFoundError(WriteLensError, KeyError):
    """A name given to ``wl.zoo`` is not a shipped model."""


# --- SAE inputs ------------------------------------------------------------------------------------------------


class SAEInputError(WriteLensError, ValueError):
    """A tensor given to an SAE (states, codes, feature indices) has the wrong shape for the SAE's config.

    Fix: pass states shaped ``[..., d_k, d_v]`` (``[..., H, d_k, d_v]`` for a stacked SAE with ``n_heads=H``)
    and codes shaped ``[..., n_features]`` (``[..., H, n_features]``).
    """


# --- experiments -----------------------------------------------------------------------------------------------


class ExperimentError(WriteLensError, ValueError):
    """An experiment cannot run with the given inputs or options: passages too short for the requested
    positions or horizons, no positions with the requested token property, a baseline that needs an SAE that
    was not passed.

    Fix: the message names the option or input; use longer or more passages, other tokens, or pass the SAE.
    """


# --- inputs, devices and files ---------------------------------------------------------------------------------


class InputError(WriteLensError, ValueError):
    """An input to ``lens.run`` / ``lens.generate`` / ``lens.trace`` is invalid: token ids that are not an integer
    ``[B, T]`` tensor (a string, floats), an empty batch or sequence, ids negative or ≥ the vocabulary, an
    ``attention_mask`` of another shape or with a row of only zeros, ``max_new_tokens < 1``, ``top_k`` outside
    ``1..vocab``, a temperature ≤ 0 when sampling.

    Fix: tokenise text first (``tok(text, return_tensors="pt").input_ids``); the message names the argument and
    the valid range.
    """


class DeviceUnavailableError(WriteLensError, RuntimeError):
    """A ``device`` names a backend this machine or torch build lacks (``"cuda"`` on a CPU-only torch, ``"cuda:3"``
    with two GPUs) or is not a device string at all.

    Fix: pass ``"cpu"``, or a device listed by ``torch.cuda.device_count()`` on a CUDA build of torch.
    """


class OutputDirError(WriteLensError, OSError):
    """An output folder cannot be used: the path is an existing file, or the folder (or the nearest existing
    parent) is not writable.

    Fix: pass a folder path you can write to (it is created if missing).
    """


class ModelLoadError(WriteLensError, OSError):
    """``WriteLens.from_pretrained`` could not find the model: a local path that does not exist, or a name that is
    neither a local folder nor a reachable Hugging Face Hub id.

    Fix: pass a folder written by ``save_pretrained`` (config.json + weights), a hub id you can reach, or a zoo
    model via ``wl.zoo.load(name)``.
    """


# --- warnings ---------------------------------------------------------------------------------------------------


class NoiseFloorWarning(UserWarning):
    """Most firings of an experiment sit below its null-edit noise floor: the effects (KL, Δ log p) of every
    condition are no larger than a small multiple of what a mathematically null edit through the same path gives,
    so the comparison between conditions is decided by float rounding. Those firings count as ties (they are left
    out of win rates); the result's ``floor`` field and its summary say how many there are.

    Fix: measure where the edit can act (``kl_position="next"`` or ``"mean_from_t"``, or ``timing="with_read"``
    instead of ``"after_read"`` with the last position), or use longer-lived sites.
    """


# --- tasks and organisms ----------------------------------------------------------------------------------------


class TaskConfigError(WriteLensError, ValueError):
    """A synthetic task (``writelens.tasks``) was asked for something it cannot build: a vocabulary too small, more
    key–value pairs than fit in the sequence, a counterfactual value that already occurs in the passage.

    Fix: the message names the knob; raise ``seq_len`` / the vocabulary or lower ``n_pairs``.
    """


class FeatureHealthWarning(UserWarning):
    """An SAE finished training with dense features (active on more than half the states) or bias-dominated ones
    (activation mostly its encoder bias): such a feature acts as a second decoder bias, wins the TopK on almost
    every state and takes the firings of per-firing tests (replacement, population), whose results then measure
    "delete the write, add a constant". ``TrainResult.health`` and ``warnings`` name the features.

    Fix: train with the default ``TrainConfig`` (``init_from_data=True``, ``dense_threshold=0.5``) and a
    ``resample_every``, or build the SAE with ``center=True``.
    """


class TrainingQualityWarning(UserWarning):
    """An SAE finished training with a final FVE below 0.3 (it explains less than 30 % of the states' variance), or
    with a budget below 20 training states per feature (too few for every feature to be seen): experiments on it
    then measure an SAE that has not learnt the states. ``TrainResult.warnings`` holds the line.

    Fix: train longer (``TrainConfig(steps=...)`` or more ``epochs``), extract more states, or use fewer features.
    """

