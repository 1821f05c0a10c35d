"""One Mamba-2 SSD kernel call: the write, transition and read per head, exact states and the exact propagation of
state edits (see :mod:`writelens.sites.mamba2` for the orientation and the formulas)."""

from __future__ import annotations

import torch
from torch import Tensor

from writelens.sites.base import Injection, RecurrentCall, WriteFactors

__all__ = ["Mamba2Call"]


class Mamba2Call(RecurrentCall):
    """One SSD kernel call over positions ``[offset, offset + T)``.

    x: [B, T, H, P]; dt: [B, T, H] effective step sizes (fp32); A: [H]; Bm, Cm: [B, T, G, N]; D: [H] or None;
    initial_state: [B, H, P, N] (HF layout) or None; log_decay: [B, T, H] when the decay is not ``dt·A`` (an
    assigned ``gate`` trace point).
    """

    def __init__(self, x, dt, A, Bm, Cm, D, initial_state, offset, log_decay=None):
        self.x, self.dt, self.A, self.Bm, self.Cm, self.D = x, dt, A, Bm, Cm, D
        self.initial_state = initial_state
        self.offset = offset
        self.batch_size, self.length, self.num_heads, self.d_v = x.shape
        self.num_groups, self.d_k = Bm.shape[2], Bm.shape[3]
        self.rep = self.num_heads // self.num_groups
        if log_decay is None:
            log_decay = dt.double() * A.double().to(dt.device)
        self.log_decay = log_decay.double().cpu()  # [B, T, H]
        self.cum = self.log_decay.cumsum(1)  # float64 cumulative log-decay, cum[:, t] = Σ_{u ≤ t}
        self.output: Tensor | None = None  # [B, T, H, P] as the layer received it (edits included)
        self.injections: list[Injection] = []

    def group(self, head: int) -> int:
        return head // self.rep

    # ---- factors ------------------------------------------------------------------------------------------------

    def write_factors(self, rows: Tensor, head: int, t: int):
        g = self.group(head)
        return (self.Bm[rows, t, g].float().cpu(), self.x[rows, t, head].float().cpu(),
                self.dt[rows, t, head].float().cpu())

    def read_vector(self, rows: Tensor, head: int, t: int):
        return self.Cm[rows, t, self.group(head)].float().cpu(), 1.0

    def factors(self, head: int) -> WriteFactors:
        g = self.group(head)
        log_decay = self.log_decay[:, :, head].float()
        return WriteFactors(
            key=self.Bm[:, :, g].float().cpu(),
            value=self.x[:, :, head].float().cpu(),
            beta=self.dt[:, :, head].float().cpu(),
            g=log_decay,
            alpha=log_decay.exp(),
            query=self.Cm[:, :, g].float().cpu(),
            scale=1.0,
            output=self.output[:, :, head].float().cpu(),
        )

    # ---- exact propagation (closed form) ------------------------------------------------------------------------

    def _decay(self, rows: Tensor, head: int, t: int) -> Tensor:
        """exp(cum_s − cum_t) for s in [t, T): [n, T − t] float64 (1 at s = t)."""
        cum = self.cum[rows, :, head]
        return torch.exp(cum[:, t:] - cum[:, t : t + 1])

    def propagate(self, injections: list[Injection], heads: list[int]):
        """δo [B, T, h, P] and δS_end [B, h, N, P] (role order) of ``injections``, float32 on CPU."""
        hidx = {h: i for i, h in enumerate(heads)}
        B, T = self.batch_size, self.length
        d_o = torch.zeros(B, T, len(heads), self.d_v, dtype=torch.float64)
        d_s = torch.zeros(B, len(heads), self.d_k, self.d_v, dtype=torch.float64)
        for inj in injections:
            t, hi, rows = inj.pos - self.offset, hidx[inj.head], inj.rows
            decay = self._decay(rows, inj.head, t)  # [n, T − t]
            C = self.Cm[rows, t:, self.group(inj.head)].double().cpu()  # [n, T − t, N]
            contrib = torch.einsum("nkv,nsk->nsv", inj.delta.double(), C) * decay[..., None]
            if not inj.with_read:
                contrib[:, 0] = 0
            d_o[rows, t:, hi] += contrib
            d_s[rows, hi] += decay[:, -1, None, None] * inj.delta.double()
        return d_o.float(), d_s.float()

    # ---- exact states --------------------------------------------------------------------------------------------

    def _start_state(self, head: int) -> Tensor:
        if self.initial_state is None:
            return torch.zeros(self.batch_size, self.d_k, self.d_v, dtype=torch.float64)
        return self.initial_state[:, head].double().cpu().transpose(-1, -2)

    def _advance(self, head: int, state: Tensor, t0: int, t1: int, rows: Tensor | None = None) -> Tensor:
        """State after local position t1−1 from the state after t0−1 ([B, N, P] float64), recorded edits included
        (``rows``: only those batch rows, for a call without recorded edits)."""
        sel = slice(None) if rows is None else rows.cpu()
        cum = self.cum[sel, :, head]
        prev = cum[:, t0 - 1] if t0 > 0 else torch.zeros(cum.shape[0], dtype=torch.float64)
        end = cum[:, t1 - 1]
        weight = torch.exp(end[:, None] - cum[:, t0:t1]) * self.dt[sel, t0:t1, head].double().cpu()  # [B, L]
        Bm = self.Bm[sel, t0:t1, self.group(head)].double().cpu()
        x = self.x[sel, t0:t1, head].double().cpu()
        state = torch.exp(end - prev)[:, None, None] * state + torch.einsum("bs,bsk,bsv->bkv", weight, Bm, x)
        for inj in self.injections:
            t = inj.pos - self.offset
            if inj.head == head and t0 <= t < t1:
                state[inj.rows] += torch.exp(end[inj.rows] - cum[inj.rows, t])[:, None, None] * inj.delta.double()
        return state

    def state_at(self, head: int, t: int) -> Tensor:
        """Exact S_t (role order [B, N, P]) after the write and any recorded edit at local t (see
        :meth:`RecurrentCall._swept_state`)."""
        return self._swept_state(head, t).float()

    def state_for_rows(self, head: int, t: int, rows: Tensor) -> Tensor:
        """:meth:`state_at` of batch ``rows`` only ([n, N, P])."""
        return self.states_for_rows(head, t, rows).float()
