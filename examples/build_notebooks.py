"""Write the teaching notebooks ``examples/0*.ipynb`` from the cell sources below (outputs stripped).

    python examples/build_notebooks.py            # rewrite every notebook
    python examples/build_notebooks.py 03         # only the notebooks whose name starts with 03

Edit the cells here, not in the .ipynb files, then rerun this script; the notebooks are committed without outputs
(``"outputs": []``, ``execution_count: null``). CI executes them with ``pytest --nbmake examples``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def md(text: str):
    return ("md", text.strip("\n"))


def code(text: str):
    return ("code", text.strip("\n"))


# ------------------------------------------------------------------------------------------------------------------
# 01: write sites and edits
# ------------------------------------------------------------------------------------------------------------------

NB01 = [
    md("""
# 01 · Write sites and exact edits

A Gated DeltaNet layer (the linear-attention layers of Qwen3.5 and Qwen3-Next) keeps, per **value head**, a matrix
state $S \\in \\mathbb{R}^{d_k \\times d_v}$. At every token $t$ it

1. **decays and erases** the old state: $S \\mapsto \\alpha_t (I - \\beta_t \\hat k_t \\hat k_t^\\top) S$,
2. adds a rank-1 **write** $\\beta_t \\hat k_t v_t^\\top$,
3. **reads** it with a query: $o_t = d_k^{-1/2}\\, S_t^\\top \\hat q_t$.

The state is never the output of a module, so residual-stream tools cannot see it. `writelens` captures the
kernel's own arguments and gives you, per *site* (layer, head), the write factors, the gates, the query, the head
output and the **exact state at any position**, plus **edits** of the state that propagate exactly through every
later token.

This notebook runs on `gdn-tiny`, a 4.7M-parameter Qwen3.5 (`Qwen3_5ForCausalLM`) that writelens trains on the
King James Bible and ships, so it works offline on a laptop CPU in well under a minute. On a real model
(`Qwen/Qwen3.5-0.8B`) every call below is the same; only the shapes grow ($d_k = d_v = 128$).
"""),
    code("""
import warnings

import plotly.graph_objects as go
import torch

import writelens as wl

warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notices
model, tok = wl.zoo.load("gdn-tiny")        # a real transformers Qwen3_5ForCausalLM + its tokenizer
lens = wl.WriteLens(model, tokenizer=tok)   # runs a self-check: the captured arguments must reproduce the kernel
print(lens)
print(lens.sites[:5])
"""),
    md("""
`gdn-tiny` has 8 layers: `[GDN, GDN, GDN, full attention] × 2`. Only the GDN layers hold a state, so the
recurrent layers are 0, 1, 2, 4, 5, 6 (writelens always uses the model's own layer index; asking for layer 3
raises `NotRecurrentLayerError`). Each has 4 value heads with $d_k = d_v = 64$ (value heads $2j$ and $2j+1$ share
key head $j$, as in Qwen3.5-4B).

## 1. Capture a run

`lens.run(ids, cache=True)` is one ordinary forward of the HF model (its fast path) that also records, for every
recurrent layer, what the kernel received. Nothing is materialised per position until you ask.
"""),
    code("""
text = "In the beginning God created the heaven and the earth. And the earth was without form, and void"
ids = tok(text, return_tensors="pt").input_ids          # [B=1, T]
tokens = [tok.decode([i]) for i in ids[0]]
T = ids.shape[1]
out = lens.run(ids, cache=True)
print("ids", tuple(ids.shape), "logits", tuple(out.logits.shape), out.cache)
"""),
    md("""
We will look at **layer 4, head 1** (the site the main job and the later notebooks use). `cache.write(layer, head)`
returns the factors the kernel used at every position:

| field | shape | meaning |
|---|---|---|
| `key` | `[B, T, d_k]` | $\\hat k_t$, L2-normalised as inside the kernel |
| `value` | `[B, T, d_v]` | $v_t$ |
| `beta` | `[B, T]` | $\\beta_t = \\sigma(b_t)$, write and erase strength |
| `g`, `alpha` | `[B, T]` | log-decay $g_t$ and decay $\\alpha_t = e^{g_t}$ |
| `query` | `[B, T, d_k]` | $\\hat q_t$, L2-normalised; the read multiplies by `scale` $= d_k^{-1/2}$ |
| `output` | `[B, T, d_v]` | the head output $o_t$ (before the gated RMSNorm and `out_proj`) |
"""),
    code("""
layer, head = 4, 1
w = out.cache.write(layer, head)
for name in ("key", "value", "beta", "g", "alpha", "query", "output"):
    print(f"{name:7s}", tuple(getattr(w, name).shape))
print("scale", w.scale, "| ‖k̂_t‖ =", w.key.norm(dim=-1)[0, :4].tolist())
"""),
    md("""
How much of the past does this head keep? $\\alpha_t$ close to 1 means slow decay; $\\beta_t$ close to 1 means the
write (and the erase along $\\hat k_t$) is strong. The write's size is $\\|\\beta_t \\hat k_t v_t^\\top\\|_F =
\\beta_t \\|v_t\\|$.
"""),
    code("""
write_norm = w.beta[0] * w.value[0].norm(dim=-1)
fig = go.Figure()
fig.add_scatter(x=list(range(T)), y=w.alpha[0], name="α_t (decay)", mode="lines+markers")
fig.add_scatter(x=list(range(T)), y=w.beta[0], name="β_t (write strength)", mode="lines+markers")
fig.add_scatter(x=list(range(T)), y=write_norm / write_norm.max(), name="‖write‖ / max", mode="lines")
fig.update_layout(template="plotly_white", height=350, title=f"L{layer}H{head}: gates along the prompt",
                  xaxis=dict(tickvals=list(range(T)), ticktext=tokens, tickangle=-60))
fig.show()
"""),
    md("""
## 2. The exact state at a position

`cache.state(layer, head, pos)` is $S_{pos}$ **after** the write at `pos`, `[B, d_k, d_v]`. writelens computes the
states at 64-token chunk boundaries with the model's own kernel on first request and recomputes at most one chunk,
so it never stores all $T$ states.

Let us check the recurrence by hand: one step from $S_{t-1}$ must give $S_t$, and the read of $S_t$ must give
the recorded head output $o_t$.
"""),
    code("""
t = 12
S_prev, S_t = out.cache.state(layer, head, t - 1)[0], out.cache.state(layer, head, t)[0]    # [d_k, d_v] each
k, v, beta, alpha, q = w.key[0, t], w.value[0, t], w.beta[0, t], w.alpha[0, t], w.query[0, t]
step = alpha * (S_prev - beta * torch.outer(k, k @ S_prev)) + beta * torch.outer(k, v)
read = w.scale * S_t.T @ q
print("S_t", tuple(S_t.shape), "‖S_t‖_F =", round(S_t.norm().item(), 4))
print("one step by hand vs cache.state:   rel err", ((step - S_t).norm() / S_t.norm()).item())
print("read by hand vs recorded output:   rel err", ((read - w.output[0, t]).norm() / read.norm()).item())
W = out.cache.write_matrix(layer, head, t)[0]                                                 # β k̂ vᵀ
print("the write is rank 1: singular values", torch.linalg.svdvals(W)[:3].tolist())
"""),
    md("""
## 3. Edits

An edit is a matrix $\\Delta S$ added to one site's state right after the write at `pos`. Inside one layer the
keys, values, gates and queries depend only on the layer's input, so the recurrence is **linear in S**: the edit's
effect on every later state and read is exactly $\\delta S_s = \\alpha_s(I-\\beta_s \\hat k_s \\hat k_s^\\top)\\,
\\delta S_{s-1}$, $\\delta o_s = d_k^{-1/2}\\,\\delta S_s^\\top \\hat q_s$. writelens runs that with the model's own
kernel, adds $\\delta o$ to the layer's output, and lets the model recompute the later layers.

| edit | $\\Delta S$ at `pos` |
|---|---|
| `Delete` | $-\\beta \\hat k v^\\top$ (decay and erase stay) |
| `Replace(key, value, scale)` | $-$write $+ s\\, \\text{key}\\otimes\\text{value}/\\|\\cdot\\|_F$ ($s$ = `scale`, or the write's own norm) |
| `Add(matrix=…)` or `Add(key=, value=, scale=)` | the matrix, as given |
| `RandomAtom(seed, scale)` | `Replace` with seeded Gaussian factors (the control of the replacement test) |
| `Install(positions, value, magnitude=m)` | $m\\,\\|\\hat k_t \\otimes v_t\\|_F\\; \\hat k_t \\otimes \\text{value}/\\|\\text{value}\\|$ at each position |

We measure each edit's effect as $\\mathrm{KL}(p_\\text{native}\\,\\|\\,p_\\text{edited})$ of the next-token
distribution at the **last** position (the project's default, in float64).
"""),
    code("""
def kl_last(native_logits, edited_logits):
    p = torch.log_softmax(native_logits[:, -1].double(), -1)
    q = torch.log_softmax(edited_logits[:, -1].double(), -1)
    return (p.exp() * (p - q)).sum(-1)              # one KL per batch row

pos = 12
gen = torch.Generator().manual_seed(0)
u = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)   # a key-side direction (d_k)
z = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)   # a value-side direction (d_v)
lord = tok.encode(" LORD", add_special_tokens=False)[0]
# the value-side direction whose read raises the logit of " LORD" along the direct path: W_O^hᵀ W_U[LORD]
direction = (lens.adapter.out_proj_slice(layer, head).T @ model.get_output_embeddings().weight[lord]).detach()

edits = {
    "Delete": wl.Delete(layer, head, pos),
    "Replace": wl.Replace(layer, head, pos, key=u, value=z),                 # scale=None: the write's own norm
    "Add": wl.Add(layer, head, pos, key=u, value=z, scale=float(W.norm())),
    "RandomAtom": wl.RandomAtom(layer, head, pos, seed=0),
    "Install": wl.Install(layer, head, (T - 3, T - 2, T - 1), value=direction, magnitude=3.0),
}
for name, edit in edits.items():
    edited = lens.run(ids, edits=[edit]).logits
    print(f"{name:10s} KL(native ‖ edited) at the last position = {kl_last(out.logits, edited).item():.3e}")
"""),
    md("""
**Many conditions, one forward.** Every edit takes `batch=` (the rows it applies to). Repeat the passage once per
condition and give each row its own edit: writelens runs the shared native prefix once and only recomputes, per
row, what the edit changed. This is how the replacement test evaluates thousands of firings.
"""),
    code("""
names = list(edits)
rows = ids.repeat(len(names), 1)                                     # [5, T]
batched = [wl.Delete(layer, head, pos, batch=0), wl.Replace(layer, head, pos, key=u, value=z, batch=1),
           wl.Add(layer, head, pos, key=u, value=z, scale=float(W.norm()), batch=2),
           wl.RandomAtom(layer, head, pos, seed=0, batch=3),
           wl.Install(layer, head, (T - 3, T - 2, T - 1), value=direction, magnitude=3.0, batch=4)]
edited = lens.run(rows, edits=batched).logits                        # [5, T, V]
for name, value in zip(names, kl_last(out.logits.expand(len(names), -1, -1), edited)):
    print(f"{name:10s} {value.item():.3e}")
"""),
    md("""
## 4. The exactness check

Every fast path has a float64 per-token twin: `lens.run(..., oracle=True)` runs all recurrent layers with the
naive recurrence and applies the edit directly to the state (slow, and the ground truth the test suite compares
the fast path against). The contract is ≤ 1e-5 relative error on logits, states and the final cache.
"""),
    code("""
def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()

for name, edit in edits.items():
    fast = lens.run(ids, edits=[edit]).logits
    oracle = lens.run(ids, edits=[edit], oracle=True).logits
    print(f"{name:10s} fast path vs float64 oracle: max rel err on logits {rel(fast, oracle):.1e}")
"""),
    md("""
**Timing.** By default (`timing="with_read"`) the read at `pos` already sees the edit, as if the write itself had
been different. `timing="after_read"` leaves $o_{pos}$ untouched and acts from `pos + 1` on (the reference code's
behaviour). With `"after_read"`, the logits at `pos` are exactly the native ones:
"""),
    code("""
for timing in ("with_read", "after_read"):
    e = lens.run(ids, edits=[wl.Delete(layer, head, pos, timing=timing)]).logits
    print(f"{timing:10s} |Δ logits| at pos {pos}: {(e[0, pos] - out.logits[0, pos]).abs().max():.2e}, "
          f"at pos {pos + 1}: {(e[0, pos + 1] - out.logits[0, pos + 1]).abs().max():.2e}")
"""),
    md("""
## 5. Generation with an edit

`lens.generate(ids, edits=...)` decodes with the edit in place. An edit at a prompt position acts during the
prefill and **persists** through the cache (the final state carries $\\delta S_T$); an edit at a generated
position applies when that token is processed. Here we *install* the direction $W_O^{h\\top} W_U[\\text{" LORD"}]$
at the last three prompt positions along the native keys, at 3× and 30× the native write norm:
"""),
    code("""
prompt = tok("And Moses said unto the people,", return_tensors="pt").input_ids
P = prompt.shape[1]
native = lens.generate(prompt, max_new_tokens=16)
print("native :", repr(tok.decode(native.new_tokens[0])))
for m in (3.0, 30.0):
    steered = lens.generate(prompt, max_new_tokens=16, edits=[
        wl.Install(layer, head, (P - 3, P - 2, P - 1), value=direction, magnitude=m)])
    lift = (torch.log_softmax(steered.logits[0, 0], -1)[lord] - torch.log_softmax(native.logits[0, 0], -1)[lord])
    print(f"m = {m:<4g}:", repr(tok.decode(steered.new_tokens[0])), f"| first-step Δ log p(' LORD') = {lift:+.2f}")
"""),
    md("""
The install turns the continuation toward " The LORD ...". The first-step lift barely grows from $m = 3$ to
$m = 30$: each head's output goes through a gated RMSNorm (normalised over $d_v$) before `out_proj`, which bounds
how far one head can move the residual stream however large the state edit is. Notebook 04 measures installs
systematically (`install_steering`: target-rank strata, a dose sweep, Wilson intervals).

## 6. The same sites in nnsight

writelens adds a parameter-free child module `write_sites` to every recurrent mixer; its points (`query`, `key`,
`value`, `beta`, `gate`, `write`, `read`, `state`) are identity modules that the layer calls inside its forward, so
nnsight sees them as ordinary modules. Heads are on axis 2: `[B, T, H, d]`. Request points in that order within a
layer, and layers in model order.
"""),
    code("""
with lens.trace(ids):
    p = lens.points(layer)
    q = p.query.output.save()                      # q̂ [B, T, H, d_k]
    v = p.value.output.save()                      # v [B, T, H, d_v]
    p.value.output[:, pos, head] = 0               # zero v at pos: the write is gone, decay and erase stay
    o = p.read.output.save()                       # head outputs o [B, T, H, d_v], after the edit
    traced = lens.nnsight.output.logits.save()

print("q", tuple(q.shape), "v", tuple(v.shape), "o", tuple(o.shape))
print("q̂ matches the cache:", rel(q[:, :, head], w.query) < 1e-6)
reference = lens.run(ids, edits=[wl.Delete(layer, head, pos)], oracle=True).logits
print(f"zeroing v in nnsight == Delete (float64 oracle): max rel err {rel(traced, reference):.1e}")
"""),
    md("""
Assigning an input point (`key`, `value`, `beta`, ...) makes the layer re-run its own kernel on the modified
inputs: exact, not linearised. See the docs page *Tracing with nnsight* for generation and the gotchas.

**Next:** notebook 02 trains a WriteSAE, a dictionary of rank-1 atoms $u w^\\top$ shaped like these writes.
"""),
]


# ------------------------------------------------------------------------------------------------------------------
# 02: train a WriteSAE
# ------------------------------------------------------------------------------------------------------------------

NB02 = [
    md("""
# 02 · Train a WriteSAE

A **WriteSAE** is a sparse autoencoder whose inputs are matrix states $S \\in \\mathbb{R}^{d_k\\times d_v}$ and
whose atoms are **rank-1 matrices** $A_i = u_i w_i^\\top$ ($u_i$ on the key side, $w_i$ on the value side), the
same shape as a write $\\beta_t \\hat k_t v_t^\\top$. That is what lets an atom *replace* a write (notebook 03) and
makes its effect on a later read factorise (notebook 04).

Steps: extract states with `wl.extract` → a `StateDataset` → train a `BilinearSAE` (WriteSAE) and a `FlatSAE`
baseline with `writelens.sae.train.train_sae` → FVE / L0 / dead features → look at atoms → save and load.

**Budget.** Everything here is tiny so that the notebook runs in about a minute on 2 CPU cores: 1,536 states of
one site of `gdn-tiny`, 256 features, a few hundred steps. The project's main job (`examples/main_job.py`) uses
4,096 states, 512 features, k = 16, 1,000 steps; the SAE shipped with the zoo (`wl.zoo.load_sae("gdn-tiny", 4, 1)`)
12,288 states and 3,000 steps. The paper's canonical cell is Qwen3.5-0.8B layer 9 head 4 ($d_k = d_v = 128$) with
2,048 features and k = 32; its reference code trains on the final states of 5,000 OpenWebText sequences of 1,024
tokens per head (the paper speaks of millions of states).
"""),
    code("""
import tempfile
import warnings
from pathlib import Path

import plotly.graph_objects as go
import torch

import writelens as wl
from writelens.sae import BilinearSAE, FlatSAE, StateDataset
from writelens.sae.metrics import evaluate_sae
from writelens.sae.train import TrainConfig, train_sae

warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notices
model, tok = wl.zoo.load("gdn-tiny")
lens = wl.WriteLens(model, tokenizer=tok)
layer, head = 4, 1
work = Path(tempfile.mkdtemp(prefix="writelens-nb02-"))   # extraction shards and training runs go here
"""),
    md("""
## 1. Extract states

Which states? The project's default (`target="sampled_positions"`) is the state **after the write** at a few
seeded positions of each passage, so the SAE sees the same kind of state the firing-level experiments later edit.
(The reference code trained on the final state of each sequence only: `target="final_state"`; `"all_positions"`
and `"writes"` exist too.)

`wl.extract` runs the lens over the passages and writes **resumable shards** (safetensors, one file per site and
shard, plus `metadata.json` with the model, positions, seeds and a fingerprint of the tokens). Re-running it with
the same arguments skips the shards already written.
"""),
    code("""
train_ids = wl.zoo.train_sample_passages(96, 128, seed=0)     # [96, 128] token ids, KJV train books
held_ids = wl.zoo.heldout_passages(32, 128, seed=0)           # [32, 128], books the model never saw
for split, ids, seed in (("train", train_ids, 0), ("heldout", held_ids, 1)):
    wl.extract(lens, ids, sites=[(layer, head)], target="sampled_positions", out_dir=work / split,
               positions_per_seq=16, seed=seed, min_position=1, batch_size=16, progress=False)

data = StateDataset.from_shards(work / "train", layer, head)
held = StateDataset.from_shards(work / "heldout", layer, head)
print(sorted(p.name for p in (work / "train").rglob("*") if p.is_file()))
print("train states", len(data), "of shape", data.state_shape, "| held-out states", len(held))
"""),
    md("""
What do these states look like? Each is a 64 × 64 sum of many decayed rank-1 writes, yet at this site almost all
of its energy sits in **one** singular direction (the mean state is not the reason: centred states look the same).
A dictionary of rank-1 atoms has the right shape; what makes the job hard is that this direction changes from
state to state, so a few hundred atoms cover it only in part (the FVE below).
"""),
    code("""
states = data.fetch(torch.arange(len(data)))                  # [N, 64, 64]
sv = torch.linalg.svdvals(states)                             # [N, 64]
energy = (sv**2).cumsum(-1) / (sv**2).sum(-1, keepdim=True)
print(f"‖S‖_F: median {states.flatten(1).norm(dim=-1).median():.3f}")
print("share of ‖S‖² in the top 1 / 4 / 16 singular directions:",
      [round(energy[:, r - 1].mean().item(), 3) for r in (1, 4, 16)])
"""),
    md("""
## 2. The WriteSAE (`BilinearSAE`)

For a state $S$ the `BilinearSAE` computes pre-activations with a **bilinear** encoder,
$z_i = e_i^{k\\top} S\\, e_i^{v} + b_i$, keeps the top $k$ (TopK, then ReLU, so at most $k$ features are active)
and decodes with rank-1 atoms: $\\hat S = \\sum_i a_i\\, u_i w_i^\\top + B$. Parameters per feature: two
$d_k$-vectors and two $d_v$-vectors, so a 64 × 64 state costs 256 numbers per feature instead of the 8,192 of a
flat SAE on $\\mathrm{vec}(S)$.
"""),
    code("""
n_features, k = 256, 8
sae = BilinearSAE(d_k=64, d_v=64, n_features=n_features, k=k, seed=0,
                  metadata={"model": "gdn-tiny", "layer": layer, "head": head, "target": "sampled_positions"})
flat = FlatSAE(d_k=64, d_v=64, n_features=n_features, k=k, seed=0)
print(sae)
for name, p in sae.named_parameters():
    print(f"  {name:8s} {tuple(p.shape)}")
count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
print(f"parameters: BilinearSAE {count(sae):,}   FlatSAE {count(flat):,}")
"""),
    md("""
## 3. Train

`train_sae` runs Adam with warmup and cosine decay, the AuxK loss for dead features (λ = 1/32), unit-norm decoder
factors, optional resampling of dead features, seeded data order, and writes safetensors checkpoints and a JSONL log
to `out_dir` (calling it again with the same `out_dir` resumes). 10% of the *passages* are held out for
validation.
"""),
    code("""
cfg = TrainConfig(lr=1e-2, lr_min=1e-3, warmup_steps=20, batch_size=128, steps=300, seed=0, val_fraction=0.1,
                  eval_every=100, log_every=25, resample_every=100, progress=False)
bilinear_run = train_sae(sae, data, cfg, out_dir=work / "bilinear")
flat_run = train_sae(flat, data, cfg, out_dir=work / "flat")
for name, run in (("BilinearSAE", bilinear_run), ("FlatSAE", flat_run)):
    v = run.final_val
    print(f"{name:11s} val: FVE {v.fve:.3f}  NMSE {v.nmse:.3f}  L0 {v.l0:.1f}  dead {v.dead_fraction:.1%}")
"""),
    code("""
fig = go.Figure()
for name, run in (("BilinearSAE", bilinear_run), ("FlatSAE", flat_run)):
    steps = [r["step"] for r in run.history if "fve" in r]
    fig.add_scatter(x=steps, y=[r["fve"] for r in run.history if "fve" in r], name=f"{name} (train batch)")
fig.update_layout(template="plotly_white", height=330, title="Fraction of variance explained while training",
                  xaxis_title="step", yaxis_title="FVE")
fig.show()
"""),
    md("""
## 4. What the metrics mean

- **FVE** (fraction of variance explained) $= 1 - \\sum\\|S-\\hat S\\|^2 / \\sum_e \\sum_n (S_{ne}-\\bar S_e)^2$, with
  a separate mean for every entry $e$ of $S$: 1 is perfect, 0 is no better than predicting the mean state.
- **NMSE** $= \\sum\\|S-\\hat S\\|^2/\\sum\\|S\\|^2$.
- **L0**: active features per state (≤ k with TopK).
- **dead**: features that never fire on the evaluated set (they waste capacity; AuxK and resampling revive them).

Evaluate on the **held-out books** too: a gap to validation would mean the dictionary fits the train books only.
"""),
    code("""
for name, model_ in (("BilinearSAE", bilinear_run.sae), ("FlatSAE", flat_run.sae)):
    m = evaluate_sae(model_, held)
    print(f"{name:11s} held-out: FVE {m.fve:.3f}  NMSE {m.nmse:.3f}  L0 {m.l0:.1f}  dead {m.dead_fraction:.1%}"
          f"  ({m.n_states} states)")
"""),
    md("""
At this budget the flat SAE usually explains a little more variance: it has 32 times more parameters, and its
atoms are arbitrary 64 × 64 matrices. What it cannot do is act like a write. `sae.atoms(ids)` returns atoms as
unit-norm factors (`key [n, r, d_k]`, `value [n, r, d_v]`, `scale [n, r]`): for the WriteSAE $r = 1$ by
construction; a FlatSAE atom is given as its SVD, and its energy is spread over many directions.
"""),
    code("""
sae, flat = bilinear_run.sae.eval(), flat_run.sae.eval()
atoms = sae.atoms([0, 1, 2])
print("WriteSAE atoms: key", tuple(atoms.key.shape), "value", tuple(atoms.value.shape), "scale", tuple(atoms.scale.shape))
flat_sv = torch.linalg.svdvals(flat.dec.detach())                    # [F, 64] singular values of each flat atom
share = (flat_sv[:, 0] ** 2 / (flat_sv**2).sum(-1))
print(f"FlatSAE atoms: the top singular direction holds {share.median():.1%} of an atom's energy (median); "
      f"a WriteSAE atom: 100%")
"""),
    md("""
## 5. Encode, decode, inspect

`encode_sparse` gives the active (value, feature) pairs of each state; `decode_sparse` rebuilds it. Here: the
state after one write of a held-out passage.
"""),
    code("""
S = held.fetch(torch.tensor([0]))                    # [1, 64, 64]
codes = sae.encode_sparse(S)                         # values [1, k], indices [1, k]
recon = sae.decode_sparse(codes)
order = codes.values[0].argsort(descending=True)
print("active features:", codes.indices[0, order].tolist())
print("coefficients:   ", [round(x, 4) for x in codes.values[0, order].tolist()])
print(f"relative error of this reconstruction: {((recon - S).norm() / S.norm()).item():.3f}")

fires = torch.zeros(n_features)
for batch in data.iter_batches(512):
    c = sae.encode_sparse(batch)
    fires += torch.bincount(c.indices[c.values > 0], minlength=n_features)
freq = (fires / len(data)).sort(descending=True).values
fig = go.Figure(go.Scatter(y=freq, mode="lines"))
fig.update_layout(template="plotly_white", height=300, title="Firing frequency of each feature (sorted)",
                  xaxis_title="feature rank", yaxis=dict(type="log", title="fraction of states"))
fig.show()
"""),
    md("""
## 6. Save and load

`sae.save(dir)` writes `cfg.json` (architecture, shapes, your metadata) and `sae_weights.safetensors`; `wl.load_sae`
rebuilds the right class, in eval mode. Never pickle. (The trainer already saved `final/` and `best/` in its
`out_dir`.) The paper's released `.pt` checkpoints load with `wl.sae.load_reference_sae(folder)`.
"""),
    code("""
folder = sae.save(work / "writesae_L4H1")
print(sorted(p.name for p in folder.iterdir()))
again = wl.load_sae(folder)
print(type(again).__name__, again.cfg.metadata)
print("same reconstruction after the round trip:", torch.equal(again(S).recon, sae(S).recon))
"""),
    md("""
The zoo ships a WriteSAE for this site trained longer (12,288 states, 512 features, k = 16, 3,000 steps); its card
says how. Notebooks 03 and 04 use it.
"""),
    code("""
shipped = wl.zoo.load_sae("gdn-tiny", layer, head)
print(shipped)
m = evaluate_sae(shipped, held)
print(f"shipped SAE on these held-out states: FVE {m.fve:.3f}  L0 {m.l0:.1f}  dead {m.dead_fraction:.1%}")
print((wl.zoo.sae_path("gdn-tiny", layer, head) / "README.md").read_text()[:600])
"""),
]


# ------------------------------------------------------------------------------------------------------------------
# 03: the replacement test
# ------------------------------------------------------------------------------------------------------------------

NB03 = [
    md("""
# 03 · The replacement test

Does a WriteSAE atom **stand in for the write it explains**? At a *firing* (a position $t$ where the SAE, encoding
the state after $t$'s write, has an active feature), replace the native write $\\beta_t \\hat k_t v_t^\\top$ with
the exact edit engine by

- **atom**: the dominant TopK atom at $t$, $s\\, u_j w_j^\\top$ ($s$ = its SAE coefficient × decoder norm);
- **delete**: nothing (the write is removed; decay and erase stay);
- **random**: a fresh seeded Gaussian rank-1 $r z^\\top$ at the same $s$,

and measure $\\mathrm{KL}(p_\\text{native}\\,\\|\\,p_\\text{edited})$ at the last position of the passage. The atom
**wins** a firing when $\\mathrm{KL}_\\text{atom} < \\mathrm{KL}_\\text{delete}$: the atom preserves more of what
the write did downstream than removing it. The **strict chain** is atom < delete < random.

Runs on `gdn-tiny` with the WriteSAE the zoo ships for layer 4, head 1 (512 features, k = 16; see notebook 02), on
held-out books, with small budgets (≈ 1 minute in all). Full-size settings are given at the end.
"""),
    code("""
import warnings

import plotly.graph_objects as go
import torch

import writelens as wl
from writelens import plot
from writelens.experiments import ReplacementOptions, ReplacementResult, replacement_test

warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notices
model, tok = wl.zoo.load("gdn-tiny")
lens = wl.WriteLens(model, tokenizer=tok)
site = (4, 1)
sae = wl.zoo.load_sae("gdn-tiny", *site)
passages = wl.zoo.heldout_passages(12, 64, seed=0)       # [12, 64] token ids from books the model never saw
print(sae, "\\npassages", tuple(passages.shape))
"""),
    md("""
## 1. Run it

`replacement_test(lens, sae, site, passages, options)` scans the passages once natively (logits, the SAE codes of
the state after every write, write norms), picks firings, and evaluates the three conditions of many firings per
forward, one firing per batch row. `max_firings=150` keeps a seeded random subset.
"""),
    code("""
options = ReplacementOptions(max_firings=150, n_bootstrap=1000, seed=2026, progress=False)
rep = replacement_test(lens, sae, site, passages, options)
print(rep)
print(f"{rep.elapsed_s:.1f} s")
"""),
    md("""
How to read the summary:

- `win_rate` = P(KL_atom < KL_delete) with its Wilson 95% interval (`win_rate_lo`, `win_rate_hi`); 0.5 is a coin
  flip. `strict_chain_rate` = P(atom < delete < random).
- `median_kl_*` and `ratio_of_medians_*`: median KL per condition and median(cond) / median(atom); > 1 means the
  control disturbs the output more than the atom. (The KLs are tiny because one write of one head of 24 rarely
  matters much dozens of tokens later; only their comparison is meaningful.)
- `bootstrap_atom_*`, `bootstrap_passage_*`: the win rate's 95% interval when whole atoms (or passages) are
  resampled, honest about firings that share an atom or a passage.
- `wilcoxon_p`: paired Wilcoxon signed-rank test of KL_atom vs KL_delete; `cliffs_delta`: Cliff's δ of
  (KL_delete, KL_atom), > 0 when the atom's KLs are smaller.
- `population_*`: the per-atom population mean (section 3).

Every per-firing number is in the result (`rep.passage`, `rep.position`, `rep.feature`, `rep.kl_atom`, ...), and
`rep.to_json(path)` / `ReplacementResult.from_json(path)` round-trip it with its options and seeds.
"""),
    code("""
print("first firings (passage, position, feature, KL atom / delete / random):")
for i in range(5):
    print(f"  {rep.passage[i]:2d} {rep.position[i]:3d} {rep.feature[i]:4d}   "
          f"{rep.kl_atom[i]:.2e} / {rep.kl_delete[i]:.2e} / {rep.kl_random[i]:.2e}")
assert ReplacementResult.from_json(rep.to_json()).kl_atom == rep.kl_atom
"""),
    md("""
## 2. Figures

`writelens.plot` returns plotly figures. The KL scatter puts each firing at (KL_atom, KL_delete) on log axes: points
above the diagonal are wins of the atom. The ratio density shows $\\log_{10}(\\mathrm{KL}_\\text{cond} /
\\mathrm{KL}_\\text{atom})$ for each control (right of 0: the atom disturbs less).
"""),
    code("""
plot.kl_scatter(rep).show()
plot.kl_scatter(rep, "random").show()
plot.kl_ratio_density(rep).show()
"""),
    md("""
## 3. Pooled win rate vs the per-atom population

The pooled win rate weights atoms by how often they fire, so a few dense features can decide it: with the SAE the
main job trains, one feature took 503 of 600 firings, the pooled win rate was 0.32 and the per-atom population mean
0.79. The **per-atom population** asks a different question: for a typical *atom*, how often does it win? Cap the firings per atom (`cap_per_atom`), compute each atom's win rate, and average
over atoms with at least `min_firings_per_atom` firings, with a Student-t interval over atoms. The project default
is ≥ 5 firings per atom; here we use 3 to keep more atoms in a small run.
"""),
    code("""
counts = torch.bincount(torch.tensor(rep.feature))
top = counts.sort(descending=True)
print(f"{len(set(rep.feature))} features fired; the top 3 own {top.values[:3].sum().item()} of {len(rep.feature)} "
      f"firings (features {top.indices[:3].tolist()})")

pop = replacement_test(lens, sae, site, passages, ReplacementOptions(
    max_firings=None, cap_per_atom=4, min_firings_per_atom=3, n_bootstrap=1000, seed=2026, progress=False))
P = pop.stats.population
print(f"population: {P.n_atoms} atoms with ≥ {P.min_firings} firings ({P.n_firings} firings), "
      f"mean per-atom win rate {P.mean:.2f} [{P.lo:.2f}, {P.hi:.2f}]  vs pooled {pop.stats.win_rate.estimate:.2f}")
"""),
    md("""
With the shipped SAE the firings are spread over many features, so the pooled and population numbers agree; when
they disagree, report both and say which features dominate. Each bar below is one atom's own win rate.
"""),
    code("""
per_atom = sorted(P.per_atom.items(), key=lambda kv: kv[1])
fig = go.Figure(go.Bar(x=[f"#{a}" for a, _ in per_atom], y=[v for _, v in per_atom], marker_color="#1f77b4"))
fig.add_hline(y=P.mean, line_dash="dash", annotation_text=f"population mean {P.mean:.2f}")
fig.add_hrect(y0=P.lo, y1=P.hi, fillcolor="#1f77b4", opacity=0.12, line_width=0)
fig.add_hline(y=0.5, line_dash="dot", line_color="gray")
fig.update_layout(template="plotly_white", height=340, title="Per-atom win rate (atom < delete)",
                  xaxis_title="atom", yaxis=dict(range=[0, 1.05], title="win rate"))
fig.show()
"""),
    md("""
## 4. Where the KL is taken

`kl_position="last"` (default) measures the final distribution of the passage: the write's *long-range* effect.
`"next"` measures the first distribution that reads the edit (at $t$ itself with the default timing), where the
write's effect is largest; `"mean_from_t"` averages every position from $t$ on. The same firings give different
answers, so always report which one you used.
"""),
    code("""
nxt = replacement_test(lens, sae, site, passages, ReplacementOptions(
    max_firings=150, kl_position="next", n_bootstrap=1000, seed=2026, progress=False))
for name, r in (("last", rep), ("next", nxt)):
    w = r.stats.win_rate
    print(f"kl_position={name:5s} win rate {w.estimate:.2f} [{w.lo:.2f}, {w.hi:.2f}]  strict chain "
          f"{r.stats.strict_chain.estimate:.2f}  median KL atom {r.stats.medians['atom'].median:.1e}")
"""),
    md("""
## 5. Several sites: the win-rate strip

`plot.win_rate_strip(results)` draws one point per (layer, head) result with its Wilson interval. The zoo ships a
WriteSAE for every head of layer 4; a smaller budget per head keeps this quick.
"""),
    code("""
results = []
for layer, head in wl.zoo.saes("gdn-tiny"):
    s = wl.zoo.load_sae("gdn-tiny", layer, head)
    r = rep if (layer, head) == site else replacement_test(
        lens, s, (layer, head), passages[:8], ReplacementOptions(max_firings=60, n_bootstrap=500, progress=False))
    results.append(r)
    print(f"L{layer}H{head}: win rate {r.stats.win_rate.estimate:.2f} over {r.stats.n_firings} firings")
plot.win_rate_strip(results).show()
"""),
    md("""
## Full-size settings

| setting | here | main job (`examples/main_job.py`) | the paper (Qwen3.5-0.8B) |
|---|---|---|---|
| passages | 12 × 64 tokens | 48 × 128 | a few hundred prompts |
| firings | 150 | 600 (+ population, cap 30) | 4,851 pooled over layers 1, 9, 17 (head 4) |
| population | cap 4, ≥ 3 firings | cap 30, ≥ 5 | cap 30, ≥ 5 (87 atoms, 2,426 firings) |
| `n_bootstrap` | 1,000 | 2,000 | 5,000 |

Other options: `scale="matched_norm"` (the atom at the native write's norm instead of its SAE coefficient),
`random_control="alive_atom"` (a random alive atom not active at $t$ as the control), `features=[...]` (only
firings of named features), `atom_choice="feature"`, `timing="after_read"`, and `baseline="flat_svd"` with
`flat_sae=` (the top-1 SVD of a flat SAE's reconstruction as a fourth condition). See the docs page *Replacement
test*.
"""),
]


# ------------------------------------------------------------------------------------------------------------------
# 04: attribution, install steering, feature card
# ------------------------------------------------------------------------------------------------------------------

NB04 = [
    md("""
# 04 · Logit attribution, install steering, feature cards

Three ways to ask what an atom $A_i = u_i w_i^\\top$ of a WriteSAE *does*:

1. **Attribution**: predict in closed form how adding $\\varepsilon\\, u_i w_i^\\top$ to the state changes later
   logits, and check the prediction against the measured change of an edited run.
2. **Install steering**: write a chosen direction into the state at a few prompt positions and see whether the
   model then says the target token.
3. **Feature card**: where the feature fires, and which tokens its atom promotes.

Runs on `gdn-tiny` with the zoo's WriteSAE for layer 4, head 1, on held-out books, with small budgets (≈ 1 minute).
"""),
    code("""
import warnings

import torch

import writelens as wl
from writelens import plot
from writelens.experiments import (AttributionOptions, InstallOptions, attribution, feature_card,
                                   install_steering)
from writelens.experiments.common import scan_site

warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notices
model, tok = wl.zoo.load("gdn-tiny")
lens = wl.WriteLens(model, tokenizer=tok)
site = (4, 1)
sae = wl.zoo.load_sae("gdn-tiny", *site)
passages = wl.zoo.heldout_passages(16, 64, seed=0)          # [16, 64] token ids
scan = scan_site(lens, sae, site, passages, keep_logits=False, show=False)   # SAE codes of every state
firing_rate = torch.bincount(scan.indices[scan.values > 0], minlength=sae.cfg.n_features) / scan.values[..., 0].numel()
print("most frequent features:", firing_rate.argsort(descending=True)[:6].tolist())
"""),
    md("""
## 1. Closed-form logit attribution

Add $\\Delta S = \\varepsilon\\, u w^\\top$ (unit factors) to $S_{t_0}$ and look at the logit of token `tok` at
$t = t_0 + h$. Three predictors, all with **zero fitted parameters**:

- **three-factor** (the paper's form): $\\varepsilon \\cdot G \\cdot d_k^{-1/2} \\langle u, \\hat q_t\\rangle \\cdot
  \\langle W_U[\\text{tok}], W_O^h w\\rangle$ with $G = \\prod_{s=t_0+1}^{t} \\alpha_s$. It models the decay and the
  read, not the erase terms, the gated RMSNorm, the MLP or later layers.
- **exact** (in-layer): the exact $\\delta o_t$ (decay *and* erase, float64), then the direct path linearised at the
  native point: gated norm → $W_O^h$ → final norm → $W_U$. Ignores the same layer's MLP and later layers.
- **linearised** (whole network): the same exact $\\delta o_s$ for every $s \\in [t_0, t]$, read through the whole
  network's Jacobian (backprop from the logit to the head output). This is the exact first-order change.

The **measured** change comes from an edited run. $\\varepsilon$ here is relative to the native write's norm at
$t_0$ (`epsilon_mode="write_norm"`); targets are the native top-1 and rank-10 tokens at $t$.
"""),
    code("""
atoms = firing_rate.argsort(descending=True)[:6].tolist()
att = attribution(lens, sae, site, passages[:8], atoms, epsilons=(0.01, 0.1, 1.0, 3.0),
                  options=AttributionOptions(epsilon_mode="write_norm", horizons=(1, 2, 4, 8),
                                             target_ranks=(1, 10), seed=2026, progress=False))
print(att)
for name in ("three_factor", "exact", "linearised"):
    stats = getattr(att, f"stats_{name}")
    print(f"{name:12s} R² by ε: " + ", ".join(f"{e}: {r:.3f}" for e, r in stats.r2_by_epsilon.items()))
"""),
    md("""
What to expect: the **linearised** predictor is exact to first order, so its R² is ≈ 1 at small ε and falls
once ε is large enough for the network's nonlinearities (norms, softmax attention, MLPs) to matter; at ε = 3 ×
the write norm it can be far below 0. The pooled `r2_linearised` mixes all ε and is dominated by the largest changes,
so read it by ε. The **exact direct-path** and **three-factor** predictors leave out the same layer's MLP and every
later layer, which carry most of a layer-4 head's effect on the logits of an 8-layer model, so their R² stays near
zero (or below) at every ε (R² < 0: worse than predicting the mean change). That is why all three are reported, with no fitted
scale (`r2_three_factor_fitted_atom_median` is the one labelled variant with a least-squares scale per atom).
"""),
    code("""
plot.attribution_scatter(att, "linearised").show()
plot.attribution_scatter(att, "three_factor").show()
"""),
    md("""
## 2. Install steering

For a prompt and a target token $T$, install at the last 3 prompt positions the rank-1 write
$m \\cdot \\|\\hat k_t \\otimes v_t\\|_F \\cdot \\hat k_t\\, v^{*\\top}$ with $v^* = W_O^{h\\top} W_U[T] / \\|\\cdot\\|$ (the
native write is kept), then decode greedily. Targets are drawn per prompt from **strata** of their rank in the
unedited model's first-step distribution (rank 1–10: already likely; 100–1000: unlikely). Reported per stratum and
magnitude: target **inclusion** (T among the generated tokens) native vs edited with Wilson intervals, the
first-step log-prob lift, and the rank shift.
"""),
    code("""
prompts = wl.zoo.heldout_passages(16, 32, seed=1)            # [16, 32]
ins = install_steering(lens, site, prompts, options=InstallOptions(
    strata=((1, 10), (10, 100), (100, 1000)), targets_per_stratum=2, magnitudes=(1.5, 3.0, 6.0),
    max_new_tokens=16, seed=2026, progress=False))
for c in ins.cells:
    print(f"rank {c.stratum:>8s}  m={c.magnitude:<3g}  inclusion {c.inclusion_native.estimate:.2f} -> "
          f"{c.inclusion_edited.estimate:.2f}   Δ log p {c.logp_lift_mean:+.2f}   median rank shift "
          f"{c.rank_shift_median:+.0f}  (n={c.n_trials})")
"""),
    code("""
plot.install_bars(ins).show()
plot.install_dose(ins).show()
changed = [j for j in range(len(ins.prompt)) if ins.generated[j] != ins.native_generated[j]] or range(len(ins.prompt))
i = max(changed, key=lambda j: ins.logp_edited[j] - ins.logp_native[j])
print(f"{len(changed)} of {len(ins.prompt)} trials changed the continuation; the one with the largest lift: "
      f"target {tok.decode([ins.target[i]])!r} (native rank {ins.native_rank[i]} -> {ins.edited_rank[i]}) "
      f"at m={ins.magnitude[i]:g}")
print("  native:", repr(tok.decode(ins.native_generated[i])))
print("  edited:", repr(tok.decode(ins.generated[i])))
"""),
    md("""
One head of a small model is a weak lever: the log-probability of the target rises, but at these magnitudes it
rarely becomes the argmax unless it was already likely. The main job runs 16 prompts × 48 tokens, 20 greedy tokens,
2 targets per stratum and the four strata up to rank 10,000; the paper's setting is a 0.8B–4B model with hundreds of
prompts.

## 3. A feature card

`feature_card` scans per-position states and returns the top-activating contexts (the firing token highlighted),
every nonzero activation, the firing rate, and the tokens the atom's value side promotes along the direct path,
$\\langle W_U[\\text{tok}], W_O^h w_i\\rangle$. Pick a *sparse* feature: one that fires at under 30% of positions.
"""),
    code("""
sparse = [f for f in firing_rate.argsort(descending=True).tolist() if 0 < firing_rate[f] < 0.3]
feature = sparse[0]
card = feature_card(lens, sae, site, passages, feature, scan=scan, progress=False)
print(card)
for c in card.contexts[:5]:
    print(f"{c.activation:.3f}  " + "".join(f"[{t}]" if j == c.highlight else t for j, t in enumerate(c.tokens)))
plot.feature_card(card).show()
"""),
    md("""
**Beyond this notebook**: `writelens.experiments.slot_erasure` (erase one feature's slot at its firings and find
the token it was holding, with disjoint selection and test halves) and `feature_amplification` (push
property-selected features while sampling, against a matched random control). Each experiment has a docs page with
its options, result fields and statistics.
"""),
]


NOTEBOOKS = {
    "01_write_sites_and_edits.ipynb": NB01,
    "02_train_a_writesae.ipynb": NB02,
    "03_replacement_test.ipynb": NB03,
    "04_attribution_and_steering.ipynb": NB04,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"c{i:02d}"  # stable ids: rebuilding an unchanged notebook gives the same file
        if kind == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> None:
    for name, cells in NOTEBOOKS.items():
        if argv and not any(name.startswith(a) for a in argv):
            continue
        path = HERE / name
        nbformat.write(build(cells), path)
        print("wrote", path.relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
