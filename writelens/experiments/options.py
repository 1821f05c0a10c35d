"""The options of the experiments the CLI exposes (replacement, attribution, install steering) and the literal
types they use. Torch-free, so that ``writelens --help`` builds every command's options without importing torch;
each experiment module re-exports its own (``from writelens.experiments.replacement import ReplacementOptions``)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal

from writelens.errors import ExperimentError
from writelens.experiments.base import JsonMixin
from writelens.validate import check_bool, check_choice, check_int, check_number

__all__ = ["KLPosition", "KLDirection", "NullEdit", "ReplacementOptions", "AttributionOptions", "InstallOptions",
           "check_options"]

KLPosition = Literal["last", "next", "mean_from_t"]
KLDirection = Literal["native_edited", "edited_native"]
NullEdit = Literal["restore", "zero"]


# ---- validation at construction -------------------------------------------------------------------------------
# Each options class names the range of its numeric fields; ``Literal`` and ``bool`` fields are checked from the type
# hints. A bad value raises ExperimentError naming ``Class.field`` (the CLI's own option checks come first there).

POS, NONNEG, POS_OR_NONE = ("int", 1, False), ("int", 0, False), ("int", 1, True)
FINITE_NONNEG = ("num", 0.0)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_options(options: Any, bounds: dict[str, tuple]) -> None:
    """Check every field of the options dataclass ``options``: Literal fields against their values, bool fields are
    bools, and the fields named in ``bounds`` (``("int", lo, allow_none)``, ``("num", lo)``, ``("ints", lo)``: a
    non-empty sequence of ints ≥ lo, ``("nums",)``: a non-empty sequence of finite numbers, ``("nums", True)``: one that
    may be empty); :class:`ExperimentError`
    naming the field otherwise. Integer fields are normalised to ``int``."""
    cls = type(options)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name, value, tp = f"{cls.__name__}.{f.name}", getattr(options, f.name), hints.get(f.name)
        choices = _literal_choices(tp)
        if choices is not None:
            check_choice(value, name, choices, ExperimentError)
        elif tp is bool:
            check_bool(value, name, ExperimentError)
        rule = bounds.get(f.name)
        if rule is None:
            continue
        kind = rule[0]
        if kind == "int":
            setattr(options, f.name, check_int(value, name, ExperimentError, rule[1], allow_none=rule[2]))
        elif kind == "num":
            check_number(value, name, ExperimentError, rule[1])
        else:
            items = list(value) if isinstance(value, (list, tuple)) else None
            if items is None or (not items and rule[-1] is not True):
                raise ExperimentError(f"{name} must be a non-empty list, got {value!r}.")
            if kind == "ints":
                setattr(options, f.name, type(value)(check_int(v, name, ExperimentError, rule[1]) for v in items))
            else:
                for v in items:
                    check_number(v, name, ExperimentError)


def _literal_choices(tp: Any) -> tuple | None:
    """The values of ``Literal[...]`` (or ``Literal[...] | None``, None included), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    args = typing.get_args(tp)
    lits = [a for a in args if typing.get_origin(a) is Literal]
    if lits and type(None) in args:
        return (*typing.get_args(lits[0]), None)
    return None


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
    #: the null edit runs at every firing (1), or at every k-th firing in (passage, position) order: a per-batch
    #: floor for large runs (the others' ``kl_null`` is nan; reused firings keep theirs)
    null_every: int = 1
    n_bootstrap: int = 2000
    seed: int = 2026
    batch_rows: int = 48
    scan_batch: int = 8
    progress: bool = True
    #: use an SAE recorded for another site / target / model anyway (see writelens.provenance)
    allow_foreign_sae: bool = False

    def __post_init__(self) -> None:
        check_options(self, {"min_position": NONNEG, "max_firings": POS_OR_NONE, "firings_per_passage": POS_OR_NONE,
                             "cap_per_atom": POS_OR_NONE, "min_firings_per_atom": NONNEG, "n_bootstrap": NONNEG,
                             "seed": NONNEG, "batch_rows": POS, "scan_batch": POS, "floor_multiple": FINITE_NONNEG,
                             "null_every": POS})
        if self.features is not None:
            self.features = [check_int(f, "ReplacementOptions.features", ExperimentError, 0) for f in self.features]


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

    def __post_init__(self) -> None:
        check_options(self, {"t0": ("int", 0, True), "min_t0": NONNEG, "horizons": ("ints", 0),
                             "target_ranks": ("ints", 1), "seed": NONNEG, "batch_rows": POS, "scan_batch": POS})


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

    def __post_init__(self) -> None:
        check_options(self, {"targets_per_stratum": POS, "magnitudes": ("nums",), "n_consecutive": POS,
                             "end_offset": NONNEG, "max_new_tokens": POS, "seed": NONNEG, "batch_rows": POS})
        strata = list(self.strata) if isinstance(self.strata, (list, tuple)) else None
        if not strata or any(not isinstance(b, (list, tuple)) or len(b) != 2 for b in strata):
            raise ExperimentError(f"InstallOptions.strata must be a non-empty list of rank bins (lo, hi), got "
                                  f"{self.strata!r}.")
        self.strata = tuple((check_int(lo, "InstallOptions.strata lo", ExperimentError, 1),
                             check_int(hi, "InstallOptions.strata hi", ExperimentError, 1)) for lo, hi in strata)
        bad = [b for b in self.strata if b[1] <= b[0]]
        if bad:
            raise ExperimentError(f"InstallOptions.strata: each rank bin (lo, hi) needs 1 <= lo < hi (rank 1 is the "
                                  f"argmax), got {bad[0]}.")
        if self.key_side == "next_query" and self.end_offset < 1:
            raise ExperimentError("InstallOptions.key_side='next_query' needs end_offset >= 1 (the query after the last "
                                  "install position must be in the prompt).")
