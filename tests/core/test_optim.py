"""core.optim.Adam against torch.optim.Adam(fused=True): the same weights and state, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.optim import Adam


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 3), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1))


def _steps(model: nn.Sequential, opt: object, n: int, seed: int, frozen: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        x = torch.randint(0, 50, (16, 4), generator=gen)
        y = torch.rand(16, generator=gen)
        opt.zero_grad()  # type: ignore[attr-defined]
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        if frozen and i % 2:  # a parameter without a gradient this step is left alone, state and all
            model[4].bias.grad = None
        opt.step()  # type: ignore[attr-defined]


@pytest.mark.parametrize("lr, frozen", [(0.01, False), (0.05, True)])
def test_same_weights_and_state_as_torch_fused_adam(lr: float, frozen: bool) -> None:
    ours, theirs = _model(1), _model(1)
    a, b = Adam(ours.parameters(), lr=lr), torch.optim.Adam(theirs.parameters(), lr=lr, fused=True)
    _steps(ours, a, 25, seed=3, frozen=frozen)
    _steps(theirs, b, 25, seed=3, frozen=frozen)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a.state[p][key], b.state[q][key])


def test_an_emptied_state_starts_again_from_zero_as_torch_does() -> None:
    """Algorithm 3 restores a pre-first-step snapshot as an empty state: both then re-initialise."""
    ours, theirs = _model(2), _model(2)
    a, b = Adam(ours.parameters(), lr=0.02), torch.optim.Adam(theirs.parameters(), lr=0.02, fused=True)
    _steps(ours, a, 3, seed=4)
    _steps(theirs, b, 3, seed=4)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        a.state[p], b.state[q] = {}, {}
    _steps(ours, a, 4, seed=5)
    _steps(theirs, b, 4, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert all(int(a.state[p]["step"]) == 4 for p in ours.parameters())


def test_refuses_what_the_fused_cpu_kernel_does_not_step() -> None:
    with pytest.raises(ValueError, match="float64"):
        Adam([nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=0.1)
