"""The hostile sweep, Python API part 2: training configs, SAE files, extraction, experiment options and inputs, the
zoo and the MQAR task. One line per bad input: the named error and a fragment of its message (part 1:
test_hardening_sweep.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from models import ids, qwen35

import writelens as wl
from writelens import errors as E
from writelens.experiments import (
    AmplifyOptions,
    AttributionOptions,
    ErasureOptions,
    InstallOptions,
    ReplacementOptions,
    attribution,
    feature_card,
    install_steering,
    replacement_test,
)
from writelens.extraction import query_metric
from writelens.sae import BilinearSAE, StateDataset, load_sae
from writelens.sae.train import TrainConfig, train_sae
from writelens.tasks import mqar

D = 8


def _sae(**kw):
    return BilinearSAE(d_k=D, d_v=D, n_features=16, k=2, seed=0, **kw)


def _states(n=64):
    return torch.randn(n, D, D, generator=torch.Generator().manual_seed(0))


def _train(**kw):
    return train_sae(_sae(), StateDataset.from_tensor(_states()),
                     TrainConfig(**{"steps": 3, "batch_size": 16, "progress": False, **kw}))


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    lens = wl.WriteLens(qwen35(layers=4, hk=1, hv=2))
    root = tmp_path_factory.mktemp("sweep2")
    count = iter(range(10**6))

    def saved(mutate_cfg=None, mutate_weights=None):
        folder = root / f"sae{next(count)}"
        _sae().save(folder)
        if mutate_cfg:
            cfg = json.loads((folder / "cfg.json").read_text())
            mutate_cfg(cfg)
            (folder / "cfg.json").write_text(json.dumps(cfg))
        if mutate_weights:
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(folder / "sae_weights.safetensors"))
            mutate_weights(tensors)
            save_file(tensors, str(folder / "sae_weights.safetensors"))
        return folder

    def extract(**kw):
        data = kw.pop("data", ids(2, 12, seed=1))
        return wl.extract(lens, data, **{"sites": [(0, 0)], "out_dir": root / f"ex{next(count)}", "progress": False,
                                         **kw})

    return SimpleNamespace(lens=lens, x=ids(2, 12, seed=1), sae=BilinearSAE(d_k=16, d_v=16, n_features=8, k=2, seed=0),
                           saved=saved, extract=extract)


def _gen():
    return torch.Generator().manual_seed(0)


CASES = [
    # ---- TrainConfig (checked at construction) and train_sae's inputs
    ("lr 0", lambda c: TrainConfig(lr=0.0), E.SAEConfigError, "TrainConfig.lr=0 is out of range; pass a number > 0"),
    ("lr NaN", lambda c: TrainConfig(lr=float("nan")), E.SAEConfigError, "TrainConfig.lr=nan is not finite"),
    ("lr negative", lambda c: TrainConfig(lr=-1e-3), E.SAEConfigError, "> 0"),
    ("steps 0", lambda c: TrainConfig(steps=0), E.SAEConfigError, "TrainConfig.steps=0"),
    ("steps negative", lambda c: TrainConfig(steps=-2), E.SAEConfigError, "integer >= 1 (or None)"),
    ("steps a float", lambda c: TrainConfig(steps=2.5), E.SAEConfigError, "steps must be an integer"),
    ("batch_size 0", lambda c: TrainConfig(batch_size=0), E.SAEConfigError, "batch_size=0"),
    ("batch_size negative", lambda c: TrainConfig(batch_size=-4), E.SAEConfigError, "batch_size=-4"),
    ("epochs 0 (was: 20 epochs)", lambda c: TrainConfig(steps=None, epochs=0), E.SAEConfigError, "TrainConfig.epochs=0"),
    ("epochs inf", lambda c: TrainConfig(epochs=float("inf")), E.SAEConfigError, "epochs=inf is not finite"),
    ("warmup_steps negative", lambda c: TrainConfig(warmup_steps=-5), E.SAEConfigError, "warmup_steps=-5"),
    ("val_fraction 1", lambda c: TrainConfig(val_fraction=1.0), E.SAEConfigError, "val_fraction=1"),
    ("val_fraction negative", lambda c: TrainConfig(val_fraction=-0.2), E.SAEConfigError, "val_fraction=-0.2"),
    ("adam_betas above 1", lambda c: TrainConfig(adam_betas=(1.5, 0.9)), E.SAEConfigError, "adam_betas=1.5"),
    ("adam_betas one number", lambda c: TrainConfig(adam_betas=0.9), E.SAEConfigError, "two numbers in [0, 1)"),
    ("adam_eps 0", lambda c: TrainConfig(adam_eps=0.0), E.SAEConfigError, "adam_eps=0"),
    ("dense_threshold negative", lambda c: TrainConfig(dense_threshold=-0.1), E.SAEConfigError, "dense_threshold=-0.1"),
    ("lambda_aux negative", lambda c: TrainConfig(lambda_aux=-1.0), E.SAEConfigError, "lambda_aux=-1"),
    ("log_every 0", lambda c: TrainConfig(log_every=0), E.SAEConfigError, "log_every=0"),
    ("keep_checkpoints 0", lambda c: TrainConfig(keep_checkpoints=0), E.SAEConfigError, "keep_checkpoints=0"),
    ("eval_every 0", lambda c: TrainConfig(eval_every=0), E.SAEConfigError, "eval_every=0"),
    ("read_weight 2", lambda c: TrainConfig(read_weight=2.0), E.SAEConfigError, "read_weight=2"),
    ("encoder_bias_init NaN", lambda c: TrainConfig(encoder_bias_init=float("nan")), E.SAEConfigError, "not finite"),
    ("progress a string", lambda c: TrainConfig(progress="no"), E.SAEConfigError, "progress must be True or False"),
    ("device cuda without CUDA", lambda c: _train(device="cuda") if not torch.cuda.is_available() else _train(device="cuda:99"),
     E.DeviceUnavailableError, "TrainConfig.device="),
    ("device not a device", lambda c: _train(device="gpu0"), E.DeviceUnavailableError, "'gpu0' is not a device"),
    ("train_data a list", lambda c: train_sae(_sae(), [_states()], TrainConfig(steps=2)), E.SAEConfigError, "must be a StateDataset"),
    ("from_tensor of no rows", lambda c: StateDataset.from_tensor(torch.zeros(0, D, D)), E.SAEConfigError, "no rows"),
    ("from_tensor of integers", lambda c: StateDataset.from_tensor(torch.ones(4, D, D, dtype=torch.long)), E.SAEConfigError, "float states"),
    # ---- SAE folders
    ("load_sae without weights", lambda c: load_sae((lambda d: ((d / "sae_weights.safetensors").unlink(), d)[1])(c.saved())),
     E.CheckpointError, "is missing"),
    ("load_sae cfg with an unknown key", lambda c: load_sae(c.saved(lambda cfg: cfg.update(colour="red"))), E.CheckpointError, "unknown fields ['colour']"),
    ("load_sae cfg k a string", lambda c: load_sae(c.saved(lambda cfg: cfg.update(k="2"))), E.CheckpointError, "does not describe a valid SAE"),
    ("load_sae cfg a JSON list", lambda c: load_sae((lambda d: ((d / "cfg.json").write_text("[1, 2]"), d)[1])(c.saved())),
     E.CheckpointError, "not a writelens SAE config"),
    ("load_sae tensor renamed", lambda c: load_sae(c.saved(mutate_weights=lambda t: t.update(enc_x=t.pop("b_enc")))),
     E.CheckpointError, "missing ['b_enc'], unexpected ['enc_x']"),
    ("load_sae tensor of wrong shape", lambda c: load_sae(c.saved(mutate_weights=lambda t: t.update(b_enc=torch.zeros(15)))),
     E.CheckpointError, "b_enc: file (15,) vs config (16,)"),
    ("load_sae of a file", lambda c: load_sae(c.saved() / "cfg.json"), E.CheckpointError, "is not a folder"),
    ("load_sae dtype int64", lambda c: load_sae(c.saved(), dtype=torch.int64), E.SAEConfigError, "not a floating-point torch dtype"),
    ("load_sae device tpu", lambda c: load_sae(c.saved(), device="tpu"), E.DeviceUnavailableError, "load_sae device='tpu'"),
    ("from_pretrained missing subfolder", lambda c: wl.SAE.from_pretrained(str(c.saved()), subfolder="nope"), E.CheckpointError, "check the subfolder"),
    # ---- extraction
    ("extract positions_per_seq 0", lambda c: c.extract(positions_per_seq=0), E.ExtractionError, "positions_per_seq=0"),
    ("extract positions_per_seq negative", lambda c: c.extract(positions_per_seq=-1), E.ExtractionError, "integer >= 1"),
    ("extract batch_size 0", lambda c: c.extract(batch_size=0), E.ExtractionError, "batch_size=0"),
    ("extract seqs_per_shard 0", lambda c: c.extract(seqs_per_shard=0), E.ExtractionError, "seqs_per_shard=0"),
    ("extract min_position beyond the sequences", lambda c: c.extract(min_position=50), E.ExtractionError, "longest sequence has 12 tokens"),
    ("extract min_position negative", lambda c: c.extract(min_position=-3), E.ExtractionError, "min_position=-3"),
    ("extract seq_len negative (dropped tokens)", lambda c: c.extract(seq_len=-1), E.ExtractionError, "seq_len=-1"),
    ("extract n_tokens negative", lambda c: c.extract(n_tokens=-5), E.ExtractionError, "n_tokens=-5"),
    ("extract site layer a float", lambda c: c.extract(sites=[(0.5, 0)]), E.ExtractionError, "a site's layer must be an integer"),
    ("extract site a string", lambda c: c.extract(sites=["0:0"]), E.ExtractionError, "(layer, head) pair"),
    ("extract sites a bare string", lambda c: c.extract(sites="0:0"), E.ExtractionError, "not a list of sites"),
    ("extract site of a full-attention layer", lambda c: c.extract(sites=[(3, 0)]), E.NotRecurrentLayerError, "not a recurrent layer"),
    ("extract layer int of a full-attention layer", lambda c: c.extract(sites=[3]), E.NotRecurrentLayerError, "not a recurrent layer"),
    ("extract float token ids", lambda c: c.extract(data=ids(2, 12).float() + 0.7), E.ExtractionError, "never truncated"),
    ("extract float ids in lists", lambda c: c.extract(data=[[1.5, 2.0]]), E.ExtractionError, "token id must be an integer"),
    ("extract token id >= vocab", lambda c: c.extract(data=torch.tensor([[1, 2, 500]])), E.InputError, "outside the vocabulary"),
    ("extract world_size 0", lambda c: c.extract(rank=0, world_size=0), E.ExtractionError, "world_size=0 must be >= 1"),
    ("query_metric min_position negative", lambda c: query_metric(c.lens, c.x, (0, 0), min_position=-1), E.InputError, "min_position=-1"),
    ("query_metric batch_size 0", lambda c: query_metric(c.lens, c.x, (0, 0), batch_size=0), E.InputError, "batch_size=0"),
    # ---- experiment options (checked at construction)
    ("kl_position unknown", lambda c: ReplacementOptions(kl_position="first"), E.ExperimentError, "'last', 'next', 'mean_from_t'"),
    ("scale unknown", lambda c: ReplacementOptions(scale="norm"), E.ExperimentError, "ReplacementOptions.scale='norm'"),
    ("atom_choice unknown", lambda c: ReplacementOptions(atom_choice="biggest"), E.ExperimentError, "'dominant', 'feature'"),
    ("random_control unknown", lambda c: ReplacementOptions(random_control="uniform"), E.ExperimentError, "'gaussian'"),
    ("kl_direction unknown", lambda c: ReplacementOptions(kl_direction="forward"), E.ExperimentError, "'native_edited'"),
    ("timing unknown", lambda c: ReplacementOptions(timing="later"), E.ExperimentError, "'with_read', 'after_read'"),
    ("baseline unknown", lambda c: ReplacementOptions(baseline="pca"), E.ExperimentError, "'none', 'flat_svd'"),
    ("min_position negative", lambda c: ReplacementOptions(min_position=-2), E.ExperimentError, "min_position=-2"),
    ("max_firings 0 (was: 1 firing)", lambda c: ReplacementOptions(max_firings=0), E.ExperimentError, "max_firings=0"),
    ("batch_rows 0", lambda c: ReplacementOptions(batch_rows=0), E.ExperimentError, "batch_rows=0"),
    ("scan_batch 0", lambda c: ReplacementOptions(scan_batch=0), E.ExperimentError, "scan_batch=0"),
    ("floor_multiple negative", lambda c: ReplacementOptions(floor_multiple=-1.0), E.ExperimentError, "floor_multiple=-1"),
    ("n_bootstrap negative", lambda c: ReplacementOptions(n_bootstrap=-1), E.ExperimentError, "n_bootstrap=-1"),
    ("features negative", lambda c: ReplacementOptions(features=[-1]), E.ExperimentError, "features=-1"),
    ("progress a string", lambda c: ReplacementOptions(progress="no"), E.ExperimentError, "True or False"),
    ("target_ranks 0", lambda c: AttributionOptions(target_ranks=(0,)), E.ExperimentError, "target_ranks=0"),
    ("horizons empty", lambda c: AttributionOptions(horizons=()), E.ExperimentError, "non-empty list"),
    ("horizons negative", lambda c: AttributionOptions(horizons=(-1,)), E.ExperimentError, "horizons=-1"),
    ("epsilon_mode unknown", lambda c: AttributionOptions(epsilon_mode="relative"), E.ExperimentError, "'absolute', 'write_norm'"),
    ("t0 negative", lambda c: AttributionOptions(t0=-1), E.ExperimentError, "t0=-1"),
    ("min_t0 negative", lambda c: AttributionOptions(min_t0=-5), E.ExperimentError, "min_t0=-5"),
    ("magnitudes empty", lambda c: InstallOptions(magnitudes=()), E.ExperimentError, "magnitudes must be a non-empty list"),
    ("magnitude NaN", lambda c: InstallOptions(magnitudes=(float("nan"),)), E.ExperimentError, "magnitudes=nan is not finite"),
    ("n_consecutive 0", lambda c: InstallOptions(n_consecutive=0), E.ExperimentError, "n_consecutive=0"),
    ("end_offset negative (installed past the prompt)", lambda c: InstallOptions(end_offset=-1), E.ExperimentError, "end_offset=-1"),
    ("strata lo >= hi", lambda c: InstallOptions(strata=((10, 1),)), E.ExperimentError, "1 <= lo < hi"),
    ("strata rank 0", lambda c: InstallOptions(strata=((0, 5),)), E.ExperimentError, "strata lo=0"),
    ("targets_per_stratum 0", lambda c: InstallOptions(targets_per_stratum=0), E.ExperimentError, "targets_per_stratum=0"),
    ("next_query without end_offset", lambda c: InstallOptions(key_side="next_query"), E.ExperimentError, "end_offset >= 1"),
    ("selection_fraction 2", lambda c: ErasureOptions(selection_fraction=2.0), E.ExperimentError, "must lie in (0, 1)"),
    ("erasure measure unknown", lambda c: ErasureOptions(measure="first"), E.ExperimentError, "'next', 'last'"),
    ("amplify temperature 0", lambda c: AmplifyOptions(temperature=0.0), E.ExperimentError, "finite number > 0"),
    # ---- experiments: inputs checked against the lens and the SAE
    ("SAE of the wrong width", lambda c: replacement_test(c.lens, _sae(), (0, 0), c.x, ReplacementOptions(progress=False)),
     E.SAEInputError, "encodes 8x8 states but site L0H0 holds 16x16"),
    ("features beyond the SAE", lambda c: replacement_test(c.lens, c.sae, (0, 0), c.x, ReplacementOptions(features=[99], progress=False)),
     E.ExperimentError, "SAE has 8 features"),
    ("float passages", lambda c: replacement_test(c.lens, c.sae, (0, 0), c.x.float() + 0.5), E.ExperimentError, "integer token ids"),
    ("site at a full-attention layer", lambda c: install_steering(c.lens, (3, 0), c.x), E.NotRecurrentLayerError, "not a recurrent layer"),
    ("attribution with no epsilons", lambda c: attribution(c.lens, c.sae, (0, 0), ids(2, 16), [0], []), E.ExperimentError, "at least one atom and one epsilon"),
    ("attribution with no atoms", lambda c: attribution(c.lens, c.sae, (0, 0), ids(2, 16), [], [0.1]), E.ExperimentError, "at least one atom"),
    ("attribution epsilon NaN", lambda c: attribution(c.lens, c.sae, (0, 0), ids(2, 16), [0], [float("nan")]), E.ExperimentError, "epsilons=nan"),
    ("attribution target rank > vocab", lambda c: attribution(c.lens, c.sae, (0, 0), ids(2, 16), [0], [0.1], AttributionOptions(target_ranks=(500,), horizons=(1,), min_t0=2)),
     E.ExperimentError, "vocabulary size 128"),
    ("attribution t0 beyond the passage", lambda c: attribution(c.lens, c.sae, (0, 0), ids(2, 16), [0], [0.1], AttributionOptions(t0=100, horizons=(1,))),
     E.ExperimentError, "AttributionOptions.t0=100"),
    ("install target id >= vocab", lambda c: install_steering(c.lens, (0, 0), c.x, targets=[500]), E.ExperimentError, "targets=500"),
    ("install one target list per prompt, wrong count", lambda c: install_steering(c.lens, (0, 0), c.x, targets=[[3]]),
     E.ExperimentError, "one list per prompt (2 lists)"),
    ("feature_card n_contexts negative", lambda c: feature_card(c.lens, c.sae, (0, 0), c.x, 0, n_contexts=-1), E.ExperimentError, "n_contexts=-1"),
    ("feature_card feature beyond the SAE", lambda c: feature_card(c.lens, c.sae, (0, 0), c.x, 99), E.ExperimentError, "feature=99"),
    # ---- zoo
    ("random_init layers 0", lambda c: wl.zoo.random_init("qwen3.5-0.8b", layers=0), E.InputError, "pass 1..24"),
    ("random_init dtype int", lambda c: wl.zoo.random_init("qwen3.5-0.8b", layers=1, dtype=torch.int32), E.InputError, "floating-point torch dtype"),
    ("random_init overrides typo", lambda c: wl.zoo.random_init("qwen3.5-0.8b", layers=1, overrides={"vocab_sise": 64}),
     E.InputError, "['vocab_sise'] are not fields"),
    ("real_config None", lambda c: wl.zoo.real_config(None), E.ZooModelNotFoundError, "not a shipped real config"),
    ("sae_path layer a float", lambda c: wl.zoo.sae_path("gdn-tiny", 4.7, 1), E.ZooModelNotFoundError, "layer must be an integer"),
    ("zoo.load device tpu", lambda c: wl.zoo.load("mamba2-tiny", device="tpu"), E.DeviceUnavailableError, "zoo.load device='tpu'"),
    ("zoo.load dtype int", lambda c: wl.zoo.load("mamba2-tiny", dtype=torch.int64), E.InputError, "floating-point torch dtype"),
    ("heldout_passages n 0", lambda c: wl.zoo.heldout_passages(0, 8), E.InputError, "n=0"),
    ("heldout_passages n a float", lambda c: wl.zoo.heldout_passages(2.5, 8), E.InputError, "n must be an integer"),
    ("heldout_passages too many", lambda c: wl.zoo.heldout_passages(10**6, 64), E.InputError, "ask for fewer or shorter"),
    # ---- the MQAR task
    ("MQARConfig seq_len too short", lambda c: mqar.MQARConfig(seq_len=3), E.TaskConfigError, "cannot hold one key–value pair"),
    ("MQARConfig n_keys a float", lambda c: mqar.MQARConfig(n_keys=2.5), E.TaskConfigError, "n_keys must be an int"),
    ("MQARConfig max_gap a float", lambda c: mqar.MQARConfig(max_gap=1.5), E.TaskConfigError, "max_gap must be an int"),
    ("MQARConfig query_frac a string", lambda c: mqar.MQARConfig(query_frac="half"), E.TaskConfigError, "query_frac must be a number"),
    ("MQARConfig.from_json unknown key", lambda c: mqar.MQARConfig.from_json('{"n_pairs": 4}'), E.TaskConfigError, "unexpected ['n_pairs']"),
    ("MQARConfig.from_json not JSON", lambda c: mqar.MQARConfig.from_json("n_keys=4"), E.TaskConfigError, "not an MQARConfig JSON"),
    ("make_batch batch negative", lambda c: mqar.make_batch(mqar.MQARConfig(), -1, 2, _gen()), E.TaskConfigError, "batch=-1"),
    ("make_batch n_pairs a float", lambda c: mqar.make_batch(mqar.MQARConfig(), 2, 2.5, _gen()), E.TaskConfigError, "n_pairs must be an integer"),
    ("training_batch no pair counts", lambda c: mqar.training_batch(mqar.MQARConfig(), 4, (), _gen()), E.TaskConfigError, "at least one pair count"),
    ("counterfactual pair out of range", lambda c: mqar.counterfactual(mqar.make_batch(mqar.MQARConfig(), 2, 3, _gen()), 9, torch.tensor([70, 71])),
     E.TaskConfigError, "0..2"),
    ("counterfactual a special token", lambda c: mqar.counterfactual(mqar.make_batch(mqar.MQARConfig(), 2, 3, _gen()), 0, torch.tensor([0, 1])),
     E.TaskConfigError, "special token"),
    ("counterfactual a distractor token given the task", lambda c: mqar.counterfactual(
        mqar.make_batch(mqar.MQARConfig(), 2, 3, _gen()), 0, torch.tensor([mqar.MQARConfig().value_ids.stop] * 2),
        mqar.MQARConfig()), E.TaskConfigError, "not all value tokens of this task"),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_its_named_error(c, make, error, match):
    with pytest.raises(error) as info:
        make(c)
    assert match in str(info.value), str(info.value)


def test_accepted_inputs_behave_as_documented():
    """Normalised, not refused: a tensor of states for train_sae, dtype names, a batch of 0 MQAR passages."""
    result = train_sae(_sae(), _states(), TrainConfig(steps=2, batch_size=16, progress=False))
    assert result.steps == 2
    assert TrainConfig(resample_every=0, renorm_every=0, warmup_steps=0).resample_every == 0  # 0: never
    from writelens.sae.train import lr_at

    rising = TrainConfig(lr=1e-4, lr_min=1e-2, warmup_steps=0)  # an lr_min above lr is capped: never above lr
    assert max(lr_at(s, rising, 10) for s in range(10)) == pytest.approx(1e-4)
    assert mqar.make_batch(mqar.MQARConfig(), 0, 2, _gen()).ids.shape == (0, 64)
    assert ReplacementOptions(features=[3, 1]).features == [3, 1]
