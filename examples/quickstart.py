"""writelens in one screen: capture the writes of a Gated DeltaNet model, read exact states, edit, generate.

Runs on the shipped ``gdn-tiny`` zoo model when it is present, else on a tiny random-init Qwen3.5.
Usage: python examples/quickstart.py [--random]
"""

from __future__ import annotations

import argparse

import torch

import writelens as wl


def load(random: bool):
    if not random:
        try:
            model, tok = wl.zoo.load("gdn-tiny")
            return wl.WriteLens(model, tokenizer=tok), "gdn-tiny (zoo)"
        except Exception as err:  # the zoo is optional for this demo
            print(f"[zoo model unavailable: {err}; using a random-init model]")
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=2,
                            linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32)
    torch.manual_seed(0)
    return wl.WriteLens(Qwen3_5ForCausalLM(cfg).eval()), "random-init Qwen3.5"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", action="store_true", help="skip the zoo and use a random-init model")
    args = ap.parse_args()
    lens, name = load(args.random)
    print(f"{name}: {lens}")
    if lens.tokenizer is not None:
        text = "In the beginning God created the heaven and the earth. And the earth was without form"
        ids = lens.tokenizer(text, return_tensors="pt").input_ids
    else:
        ids = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    T = ids.shape[1]
    out = lens.run(ids, cache=True)
    # the site with the longest memory: the head of the last recurrent layer whose mean decay α is largest
    layer = lens.recurrent_layers[-1]
    alphas = [out.cache.write(layer, h).alpha.mean().item() for h in range(lens.adapter.num_heads)]
    head = max(range(len(alphas)), key=alphas.__getitem__)
    print(f"layer {layer}: mean decay α per head {[round(a, 3) for a in alphas]} -> head {head}")
    w = out.cache.write(layer, head)
    print(f"site L{layer} H{head}: key {tuple(w.key.shape)}, value {tuple(w.value.shape)}, beta {tuple(w.beta.shape)}")
    S = out.cache.state(layer, head, T // 2)
    print(f"state at position {T // 2}: {tuple(S.shape)}, Frobenius norm {S.norm():.4f}")
    pos = T // 2
    norm = out.cache.write_matrix(layer, head, pos).norm()
    print(f"native write at {pos}: ‖β k̂ vᵀ‖_F = {norm:.4f}")

    def kl(edited: torch.Tensor) -> float:
        p = torch.log_softmax(out.logits[0, -1].double(), -1)
        q = torch.log_softmax(edited[0, -1].double(), -1)
        return float((p.exp() * (p - q)).sum())

    deleted = lens.run(ids, edits=[wl.Delete(layer, head, pos)]).logits
    rand = lens.run(ids, edits=[wl.RandomAtom(layer, head, pos, seed=0)]).logits
    print(f"KL(native ‖ delete) = {kl(deleted):.3e}   KL(native ‖ random atom) = {kl(rand):.3e}")

    # steering install: value side W_O^hᵀ W_U[target] (normalised), key side k̂_t, 3 positions, m × native norm
    target = lens.tokenizer.encode(" LORD", add_special_tokens=False)[0] if lens.tokenizer is not None else 7
    direction = lens.adapter.out_proj_slice(layer, head).T @ lens.model.get_output_embeddings().weight[target]
    gen = lens.generate(ids, max_new_tokens=12)
    decode = (lambda t: lens.tokenizer.decode(t)) if lens.tokenizer is not None else (lambda t: t.tolist())
    print("native       :", repr(decode(gen.new_tokens[0])))
    logp = lambda g: torch.log_softmax(g.logits[0, 0].double(), -1)[target].item()  # noqa: E731
    for m in (3.0, 30.0):
        steered = lens.generate(ids, max_new_tokens=12, edits=[
            wl.Install(layer, head, (T - 3, T - 2, T - 1), value=direction.detach(), magnitude=m)])
        hit = "yes" if target in steered.new_tokens[0].tolist() else "no"
        print(f"install m={m:<4}:", repr(decode(steered.new_tokens[0])),
              f"| first-step log p({decode([target])!r}) {logp(gen):.2f} -> {logp(steered):.2f}, appears: {hit}")


if __name__ == "__main__":
    main()
