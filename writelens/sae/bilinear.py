"""BilinearSAE (WriteSAE): bilinear encoder, rank-r decoder atoms.

    a_i = TopK( sum_r enc_k[i,r]^T (S - M) enc_v[i,r] + b_enc[i] )
    S_hat = sum_i a_i sum_r dec_k[i,r] dec_v[i,r]^T + b_dec (+ M)

``dec_k (F, r, d_k)`` is the key side of each atom, ``dec_v (F, r, d_v)`` the value side, so atom i is
``dec_k[i] dec_v[i]^T`` in the orientation of a write ``k v^T``. With ``tied=True`` the encoder uses the
decoder factors (no ``enc_k`` / ``enc_v`` parameters are stored; the attributes return the decoder ones).
The encoder is initialised as a copy of the decoder (Gao et al. 2024); the reference code drew both at
random. The paper's parameter names: ``V_enc, W_enc, V_dec, W_dec, bias`` = ``enc_k, enc_v, dec_k, dec_v,
b_dec``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from writelens.sae.base import SAE
from writelens.sae.init import top_singular_factors, unit_randn
from writelens.sae.sparse import bilinear_preacts, bilinear_preacts_at, rank_decode, workspace_size


class BilinearSAE(SAE):
    """WriteSAE: encoder ``a_i = sum_r u_ir^T S w_ir + b_i`` (tied or untied), rank-r decoder. See module doc."""

    architecture: ClassVar[str] = "bilinear"

    def _init_parameters(self, generator: torch.Generator | None) -> None:
        c = self.cfg
        self.dec_k = nn.Parameter(unit_randn((*self.head_shape, c.n_features, c.rank, c.d_k), generator))
        self.dec_v = nn.Parameter(unit_randn((*self.head_shape, c.n_features, c.rank, c.d_v), generator))
        if not c.tied:
            self.enc_k = nn.Parameter(self.dec_k.detach().clone())
            self.enc_v = nn.Parameter(self.dec_v.detach().clone())

    def __getattr__(self, name: str) -> Any:
        cfg = self.__dict__.get("cfg")
        if name in ("enc_k", "enc_v") and cfg is not None and cfg.tied:
            return super().__getattr__("dec" + name[3:])
        return super().__getattr__(name)

    def _encoder(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.heads_first(self.enc_k), self.heads_first(self.enc_v), self.heads_first(self.b_enc)

    def _preacts(self, states: Float[Tensor, "H B dk dv"]) -> Float[Tensor, "H B F"]:
        enc_k, enc_v, b_enc = self._encoder()
        workspace = None
        if not torch.is_grad_enabled():
            size = workspace_size(*enc_k.shape[:2], self.cfg.d_k, self.cfg.d_v)
            workspace = self.__dict__.get("_forms_workspace")
            if workspace is None or workspace.numel() < size or workspace.dtype != states.dtype or workspace.device != states.device:
                workspace = torch.empty(size, dtype=states.dtype, device=states.device)
                self.__dict__["_forms_workspace"] = workspace  # scratch, not state: never saved
        return bilinear_preacts(states, enc_k, enc_v, b_enc, workspace=workspace)

    def _preacts_at(self, states: Float[Tensor, "H B dk dv"], indices: Int[Tensor, "H B m"]) -> Tensor:
        return bilinear_preacts_at(states, *self._encoder(), indices)

    def _decode(self, values: Float[Tensor, "H B m"], indices: Int[Tensor, "H B m"]) -> Tensor:
        return rank_decode(values, indices, self.heads_first(self.dec_k), self.heads_first(self.dec_v))

    def decoder_factors(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.dec_k, 1), (self.dec_v, 1)]

    def feature_parameters(self) -> list[nn.Parameter]:
        params = [self.dec_k, self.dec_v, self.b_enc]
        if not self.cfg.tied:
            params += [self.enc_k, self.enc_v]
        if self.cfg.activation == "jumprelu":
            params.append(self.activation.log_threshold)
        return params

    def _atom_factors(self, head: int, indices: Int[Tensor, " n"]) -> tuple[Tensor, Tensor]:
        return self.heads_first(self.dec_k)[head, indices], self.heads_first(self.dec_v)[head, indices]

    def _encoder_scale(self, head: int, live: Bool[Tensor, " F"]) -> Tensor:
        enc_k, enc_v, _ = self._encoder()
        form_norms = (enc_k[head].norm(dim=-1) * enc_v[head].norm(dim=-1)).sum(-1)
        return form_norms[live].mean() if bool(live.any()) else form_norms.new_tensor(1.0)

    def _reinit_features(self, head: int, features: Tensor, targets: Float[Tensor, "n dk dv"], scale: Tensor):
        keys, values = top_singular_factors(targets, self.cfg.rank)
        self.heads_first(self.dec_k)[head, features] = keys
        self.heads_first(self.dec_v)[head, features] = values
        if not self.cfg.tied:
            # split the encoder norm evenly over the two factors (the form is their product)
            factor_scale = (scale / self.cfg.rank).sqrt()
            self.heads_first(self.enc_k)[head, features] = keys * factor_scale
            self.heads_first(self.enc_v)[head, features] = values * factor_scale
