"""Kernel wrappers every family shares: device dispatch (torch reference kernels on CPU) and conv capture."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from writelens.sites.base import active_session, current_layer


def _torch_impl(fn: Any) -> Any:
    return getattr(fn, "__wrapped__", fn)


class DeviceDispatch:
    """Calls the torch reference implementation on CPU tensors and the transformers-selected one on GPU."""

    def __init__(self, original: Any):
        self.original = original
        self.torch_impl = _torch_impl(original)
        self.__wrapped__ = self.torch_impl

    def pick(self, tensor: Tensor) -> Any:
        return self.original if tensor.is_cuda else self.torch_impl

    def __call__(self, hidden_states, *args, **kwargs):
        return self.pick(hidden_states)(hidden_states, *args, **kwargs)


class ConvCapture(DeviceDispatch):
    """``causal_conv1d_fn`` with device dispatch that also records its input ([B, conv_dim, T], the pre-conv
    stream whose last ``K`` columns form the HF conv state) for layers a session asks for."""

    def __call__(self, hidden_states, *args, **kwargs):
        session = active_session()
        layer = current_layer()
        if session is not None and layer in session.capture_conv:
            session.conv_inputs[layer] = hidden_states.detach()
        return self.pick(hidden_states)(hidden_states, *args, **kwargs)
