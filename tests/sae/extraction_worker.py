"""Run by tests/test_extraction.py in a subprocess that it kills mid-run: a slow extraction of a tiny model."""

import sys
import time

import torch


def tiny_lens():
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    import writelens

    cfg = Qwen3_5TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                            linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                            linear_conv_kernel_dim=4, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(cfg).eval()
    return writelens.WriteLens(model)


def corpus(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 30, (n,), generator=g).tolist()
    return [torch.randint(3, 256, (length,), generator=g).tolist() for length in lengths]


ARGS = dict(sites=[(0, 0), (0, 1), (2, 1)], target="sampled_positions", positions_per_seq=4, seed=5, batch_size=2,
            seqs_per_shard=2, progress=False)


def main(out_dir: str, delay: float) -> None:
    from writelens.extraction import extract

    lens = tiny_lens()
    run = lens.run

    def slow_run(*args, **kwargs):
        time.sleep(delay)
        return run(*args, **kwargs)

    lens.run = slow_run
    extract(lens, corpus(), out_dir=out_dir, **ARGS)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
