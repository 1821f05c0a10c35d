"""One example per writelens error and warning: the code that raises it on a shipped model, and its message.

    python docs/errors_examples.py          # rewrites the "Every error, with an example" part of docs/errors.md

``tests/test_errors_page.py`` runs every example (each must raise its named class) and checks that the page lists
every class of ``writelens.errors``. Each example runs in a namespace holding ``wl``, ``torch``, ``lens`` (gdn-tiny,
8 layers, full attention at layers 3 and 7, 4 value heads), ``ids`` (2 × 12 token ids) and ``tmp`` (an
empty folder).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

#: (class name, code that raises or warns it; None where no cheap example exists, with ``why`` in its place)
EXAMPLES: list[tuple[str, str]] = [
    ("UnsupportedModelError", "wl.WriteLens(torch.nn.Linear(2, 2))"),
    ("NotRecurrentLayerError", "lens.run(ids, edits=[wl.Delete(3, 0, 4)])"),
    ("SiteOutOfRangeError", "lens.run(ids, edits=[wl.Delete(0, 9, 4)])"),
    ("PositionOutOfRangeError", "lens.run(ids, edits=[wl.Delete(0, 0, 40)])"),
    ("BatchRowOutOfRangeError", "lens.run(ids, edits=[wl.Delete(0, 0, 4, batch=5)])"),
    ("EditShapeError", "wl.Replace(0, 0, 4, key=torch.ones(7), value=torch.ones(32))  # then run: d_k is 32\n"
                       "lens.run(ids, edits=[wl.Replace(0, 0, 4, key=torch.ones(7), value=torch.ones(32))])"),
    ("EditConflictError", "lens.run(ids, edits=[wl.Delete(0, 0, 4), wl.Delete(0, 0, 4)])"),
    ("NonFiniteError", "wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=8, k=2).encode(torch.full((1, 4, 4), float('nan')))"),
    ("MissingTokenizerError", "with wl.WriteLens(lens.model).trace('text needs a tokenizer'):\n    pass"),
    ("SiteNotCapturedError", "lens.run(ids, cache=True, sites=[(0, 0)]).cache.write(1, 0)"),
    ("SAEConfigError", "wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=8, k=16)"),
    ("SAEProvenanceError", "from writelens.experiments import replacement_test\n"
                           "replacement_test(lens, wl.zoo.load_sae('gdn-tiny', 4, 1), (4, 2), ids)  # L4H1's SAE at L4H2"),
    ("CheckpointError", "wl.sae.load_sae(tmp)"),
    ("ChecksumError", "p = wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=8, k=2).save(tmp) / 'sae_weights.safetensors'\n"
                      "b = bytearray(p.read_bytes()); b[-1] ^= 255; p.write_bytes(bytes(b))\n"
                      "wl.sae.load_sae(tmp)"),
    ("ExtractionError", "wl.sae.data.StateDataset.from_shards(tmp, 0, 0)"),
    ("ZooModelNotFoundError", "wl.zoo.load('gdn-huge')"),
    ("SAEInputError", "wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=8, k=2).encode(torch.zeros(3, 5, 4))"),
    ("ExperimentError", "from writelens.experiments import replacement_test\n"
                        "replacement_test(lens, wl.sae.BilinearSAE(d_k=64, d_v=64, n_features=8, k=2), (0, 0), "
                        "torch.zeros(2, 3, 4, dtype=torch.long))"),
    ("InputError", "lens.run(torch.tensor([[1, 2, -5]]))"),
    ("DeviceUnavailableError", "from writelens.validate import check_device\ncheck_device('cuda:7' if torch.cuda.is_available() "
                               "else 'cuda')"),
    ("OutputDirError", "f = tmp / 'a_file'; f.write_text('x')\n"
                       "wl.extract(lens, ids, sites=[(0, 0)], out_dir=f, progress=False)"),
    ("ModelLoadError", "wl.WriteLens.from_pretrained(str(tmp / 'no_such_model'))"),
    ("TaskConfigError", "from writelens.tasks.mqar import MQARConfig\nMQARConfig(n_keys=1)"),
    ("NoiseFloorWarning", "from writelens.experiments.floor import noise_floor\n"
                          "noise_floor([1e-13] * 4, {'atom': [1e-14] * 4, 'delete': [2e-14] * 4}, multiple=10, "
                          "null_edit='restore', metric='KL', headline=('atom', 'delete'))"),
    ("FeatureHealthWarning", "from writelens.sae.train import TrainConfig, train_sae\n"
                             "x = torch.randn(256, 4, 4) + 5\n"
                             "train_sae(wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=8, k=2, seed=0), "
                             "wl.sae.data.StateDataset.from_tensor(x), TrainConfig(steps=30, batch_size=64, "
                             "init_from_data=False, resample_every=0, dense_threshold=1.0, progress=False))"),
    ("TrainingQualityWarning", "from writelens.sae.train import TrainConfig, train_sae\n"
                               "train_sae(wl.sae.BilinearSAE(d_k=4, d_v=4, n_features=64, k=2, seed=0), "
                               "wl.sae.data.StateDataset.from_tensor(torch.randn(256, 4, 4)), "
                               "TrainConfig(steps=2, batch_size=64, progress=False))"),
]
#: classes with no cheap example, and what raises them
NO_EXAMPLE = {
    "WriteLensError": "the base class: `except wl.errors.WriteLensError` catches every error below.",
    "SelfCheckError": "raised by `WriteLens(model)` when the captured write-site quantities do not reproduce the "
                      "model's own layer outputs (an adapter / transformers version mismatch); not reachable from a "
                      "supported model.",
}


def namespace(tmp: Path) -> dict:
    import torch

    import writelens as wl
    import writelens.sae.data  # noqa: F401  (wl.sae.data in the examples)

    model, _ = wl.zoo.load("gdn-tiny")
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    return {"wl": wl, "torch": torch, "lens": wl.WriteLens(model), "ids": ids, "tmp": tmp}


def run_example(code: str, ns: dict) -> tuple[str, str]:
    """(class name, message) of what the example raised or warned; ("", "") when nothing."""
    local = {**ns, "tmp": Path(tempfile.mkdtemp())}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exec(code, local)  # noqa: S102  (the examples above, nothing else)
        except Exception as exc:  # noqa: BLE001
            return type(exc).__name__, str(exc)
    import writelens.errors as errors

    named = [w for w in caught if w.category.__module__ == errors.__name__]
    return (named[0].category.__name__, str(named[0].message)) if named else ("", "")


def page_section(ns: dict) -> str:
    out = ["## Every error, with an example", "",
           "Made by `python docs/errors_examples.py` on `gdn-tiny` (messages as printed; paths shortened).", ""]
    for name, why in NO_EXAMPLE.items():
        out += [f"### {name}", "", why, ""]
    for name, code in EXAMPLES:
        got, message = run_example(code, ns)
        message = re.sub(r"/tmp/[^\s'\"]*", "<tmp>", message)
        out += [f"### {name}", "", "```python", code, "```", "", f"> `{got}`: {message}", ""]
    return "\n".join(out)


MARK = "<!-- errors_examples.py: everything below is generated -->"

if __name__ == "__main__":
    page = Path(__file__).with_name("errors.md")
    head = page.read_text().split(MARK)[0].rstrip() + "\n\n" + MARK + "\n\n"
    page.write_text(head + page_section(namespace(Path(tempfile.mkdtemp()))))
    print(f"wrote {page}")
