"""writelens.sae imports run one way: no module of the package imports, directly or around a loop, one that
imports it back (lazy imports inside functions count), and the architectures sit below the registry and io."""

import ast
from pathlib import Path

import writelens.sae

PACKAGE = Path(writelens.sae.__file__).parent


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m.rsplit(".", 1)[-1] for m in found if m.startswith("writelens.sae.")} & modules - {name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles_in_sae():
    graph = _graph()
    cycles = sorted(name for name in graph if name in _reachable(graph, name))
    assert not cycles, f"modules of writelens.sae on an import cycle: {cycles}"


def test_architectures_below_registry_and_io():
    graph = _graph()
    for architecture in ("base", "flat", "matrix", "bilinear"):
        assert not {"registry", "io", "reference", "train"} & _reachable(graph, architecture), architecture
    assert {"bilinear", "flat", "matrix"} <= graph["registry"]


def test_public_names_and_persistence_hooks(tmp_path):
    from writelens.sae import SAE, BilinearSAE, FlatSAE, MatrixSAE, build_sae, load_sae  # noqa: F401
    from writelens.sae.io import CONFIG_FILE, WEIGHTS_FILE, read_weights, save_sae  # noqa: F401

    sae = BilinearSAE(d_k=4, d_v=3, n_features=6, k=2, seed=0)
    folder = sae.save(tmp_path / "s")
    back = SAE.from_pretrained(str(folder))
    assert type(back) is BilinearSAE and all(
        (a == b).all() for a, b in zip(sae.state_dict().values(), back.state_dict().values(), strict=True)
    )
