"""Adam for small models: torch's fused Adam kernel, without `torch.optim`'s per-step bookkeeping.

A device's CTR model has ~15k parameters; one mini-batch of its arithmetic costs less than the
hooks, profiler records and state checks `torch.optim.Adam.step` wraps around the kernel, which
made the optimizer ~a sixth of every training step. `Adam` here keeps the same per-parameter
state (`step`, `exp_avg`, `exp_avg_sq`, in a `state` dict keyed by parameter, initialised
lazily on a parameter's first step) and calls the same kernel with the same arguments as
`torch.optim.Adam(params, lr, fused=True)` with default betas, eps and no weight decay, so the
weights come out bit for bit the same (tests/core/test_optim.py holds it to that).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

BETAS = (0.9, 0.999)
EPS = 1e-8


class Adam:
    """`torch.optim.Adam(params, lr=lr, fused=True)`, numerically; CPU float32 parameters only."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        for p in self.params:
            if p.device.type != "cpu" or p.dtype != torch.float32:
                raise ValueError(f"Adam here steps CPU float32 parameters, got {p.dtype} on {p.device}")
        self.lr = lr
        self.state: dict[nn.Parameter, dict[str, torch.Tensor]] = {p: {} for p in self.params}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        states = [self._state(p) for p in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            live, [p.grad for p in live], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            steps, amsgrad=False, lr=self.lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS,
            maximize=False, grad_scale=None, found_inf=None,
        )

    def _state(self, p: nn.Parameter) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:  # as torch: zeros on the first step (and again after a restore to an empty state)
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
