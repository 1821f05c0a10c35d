"""Random-init models whose recurrence matters: the gate spreads the tests and the main job's smoke runs share.

HF random init leaves Gated DeltaNet with ``dt_bias = 1`` and ``A_log`` up to ``log 16`` (states forget within a token
or two), Mamba-2 with similar fast decays, and rwkv7-hf with ``k_k = k_a = 0`` (no erase term) and tiny token-shift
mixes. :func:`spread_gates` redraws those parameters (in place, from torch's global generator) so that decay, erase
and the writes all matter over tens of tokens. Not for trained checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["spread_gates"]


@torch.no_grad()
def spread_gates(model: nn.Module) -> nn.Module:
    """Spread the gates of every recurrent layer of ``model`` (GDN, Mamba-2, rwkv7-hf RWKV-7); returns ``model``."""
    for module in model.modules():
        gdn = getattr(module, "linear_attn", None)
        if gdn is not None:
            gdn.dt_bias.normal_(0.0, 1.0)
            gdn.A_log.uniform_(-2.0, 0.5)
        elif type(module).__name__ == "Mamba2Mixer":
            module.A_log.uniform_(-2.0, 1.5)
            module.dt_bias.normal_(-1.0, 1.0)
            module.D.normal_(0.0, 1.0)
        elif type(module).__name__ == "RWKV7Block":
            attn = module.attn
            for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
                getattr(attn, name).uniform_(0.0, 1.0)
            attn.k_k.normal_(1.0, 0.5)
            attn.k_a.uniform_(0.0, 1.0)
            attn.r_k.normal_(0.0, 0.5)
            attn.w_lora.lora[2].bias.normal_(0.0, 2.0)
            module.ffn.x_k.uniform_(0.0, 1.0)
    return model
