"""The options of the experiments the CLI exposes (replacement, attribution, install steering) and the literal
types they use. Torch-free, so that ``writelens --help`` builds every command's options without importing torch;
each experiment module re-exports its own (``from writelens.experiments.replacement import ReplacementOptions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from writelens.experiments.base import JsonMixin

__all__ = ["KLPosition", "KLDirection", "NullEdit", "ReplacementOptions", "AttributionOptions", "InstallOptions"]

KLPosition = Literal["last", "next", "mean_from_t"]
KLDirection = Literal["native_edited", "edited_native"]
NullEdit = Literal["restore", "zero"]


@dataclass
class ReplacementOptions(JsonMixin):
    """Options of :func:`replacement_test`.

    Attributes:
        scale: ``"coefficient"`` (the SAE coefficient of the atom, unit-norm factors) or ``"matched_norm"``
            (‖β k̂ vᵀ‖_F of the native write).
        kl_position: ``"last"`` (last position of the passage), ``"next"`` (the first affected distribution only)
            or ``"mean_from_t"`` (mean over every position from the edit on).
        kl_direction: ``"native_edited"`` = KL(p_native ‖ p_edited) or ``"edited_native"``.
        timing: edit timing, ``"with_read"`` (the read at t sees the edit) or ``"after_read"``.
        features: only positions where one of these features fires (None: every position with any active
            feature); each position gives one firing, attributed to its highest-coefficient named feature.
        atom_choice: ``"dominant"`` (the largest-coefficient atom at t, the paper's choice) or ``"feature"`` (the
            firing feature's own atom).
        random_control: ``"gaussian"`` (fresh r zᵀ per firing) or ``"alive_atom"`` (a random alive atom not active
            at t).
        min_position: skip firings before this position.
        max_firings: keep at most this many firings (seeded random choice; None: all).
        firings_per_passage: cap per passage (None: no cap).
        cap_per_atom: population mode: at most this many firings per feature (None: no cap).
        min_firings_per_atom: atoms with fewer firings are left out of the per-atom population mean.
        baseline: ``"none"`` or ``"flat_svd"`` (needs ``flat_sae=``).
        null_edit: the null edit run at every firing for the noise floor: ``"restore"`` (delete the write and add it
            back) or ``"zero"`` (add a zero matrix). floor_multiple: KLs ≤ this × the largest null KL are below the
            floor (ties when both compared KLs are).
        n_bootstrap: cluster-bootstrap resamples. seed: firing choice, random atoms, bootstrap.
        batch_rows: edited rows per forward. scan_batch: passages per native pass. progress: tqdm bars.
    """

    scale: Literal["coefficient", "matched_norm"] = "coefficient"
    kl_position: KLPosition = "last"
    kl_direction: KLDirection = "native_edited"
    timing: Literal["with_read", "after_read"] = "with_read"
    features: list[int] | None = None
    atom_choice: Literal["dominant", "feature"] = "dominant"
    random_control: Literal["gaussian", "alive_atom"] = "gaussian"
    min_position: int = 1
    max_firings: int | None = 2000
    firings_per_passage: int | None = None
    cap_per_atom: int | None = None
    min_firings_per_atom: int = 5
    baseline: Literal["none", "flat_svd"] = "none"
    null_edit: NullEdit = "restore"
    floor_multiple: float = 10.0
    n_bootstrap: int = 2000
    seed: int = 2026
    batch_rows: int = 48
    scan_batch: int = 8
    progress: bool = True
    #: use an SAE recorded for another site / target / model anyway (see writelens.provenance)
    allow_foreign_sae: bool = False


@dataclass
class AttributionOptions(JsonMixin):
    """Options of :func:`attribution`.

    Attributes:
        t0: the edit position (None: one seeded position per passage in [min_t0, T − 1 − max(horizons)]).
        min_t0: the smallest t0 drawn.
        horizons: eval positions t = t0 + h (h ≥ 0; h = 0 is the read at t0 itself).
        target_ranks: eval tokens: the native rank-r token of the distribution at t (1 = the top-1 prediction).
        epsilon_mode: ``"absolute"`` (‖ΔS‖_F = ε) or ``"write_norm"`` (ε × ‖β k̂ vᵀ‖_F of the native write at t0).
        seed: t0 draws. batch_rows: edited rows per forward. scan_batch: passages per native pass. progress: bars.
    """

    t0: int | None = None
    min_t0: int = 4
    horizons: tuple[int, ...] = (1, 2, 4, 8)
    target_ranks: tuple[int, ...] = (1,)
    epsilon_mode: Literal["absolute", "write_norm"] = "absolute"
    seed: int = 2026
    batch_rows: int = 48
    scan_batch: int = 8
    progress: bool = True
    #: use an SAE recorded for another site / target / model anyway (see writelens.provenance)
    allow_foreign_sae: bool = False


@dataclass
class InstallOptions(JsonMixin):
    """Options of :func:`install_steering`.

    Attributes:
        strata: rank bins [lo, hi) of the target in the unedited first-step distribution (rank 1 = argmax).
        targets_per_stratum: targets drawn per prompt and stratum (seeded).
        magnitudes: install magnitudes m (relative to the native β-free write norm ‖v_t‖); the dose sweep.
        n_consecutive: consecutive install positions. end_offset: the last install position is T − 1 − end_offset.
        key_side: ``"key"`` (k̂_t, default) or ``"next_query"`` (q̂_{t+1}; needs end_offset ≥ 1).
        max_new_tokens: greedy continuation length. seed: target draws. batch_rows: rows per generate call.
    """

    strata: tuple[tuple[int, int], ...] = ((1, 10), (10, 100), (100, 1000), (1000, 10000))
    targets_per_stratum: int = 2
    magnitudes: tuple[float, ...] = (1.5, 3.0, 6.0)
    n_consecutive: int = 3
    end_offset: int = 0
    key_side: Literal["key", "next_query"] = "key"
    max_new_tokens: int = 20
    seed: int = 2026
    batch_rows: int = 64
    progress: bool = True
