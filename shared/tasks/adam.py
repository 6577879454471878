"""Adam (L2 weight decay), the update ``torch.optim.Adam`` makes on the CPU, without torch.optim.

Why not ``torch.optim.Adam``: its constructor (``Optimizer.add_param_group``, wrapped in
``torch._disable_dynamo``) imports ``torch._dynamo`` and, with it, sympy: ~800 modules,
~80 MB of resident memory and ~1.7 s in the ClientApp worker's first train message, all
for an optimizer that never compiles anything (measured 2026-11-29, torch 2.13.0 CPU). The
arithmetic is torch's single-tensor path, op for op, so results match it to float rounding
(tests/shared/tasks/test_adam.py checks this against ``torch.optim.Adam``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam with L2 weight decay (``torch.optim.Adam``'s ``weight_decay``), no amsgrad."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        step_size = self.lr / bias_correction1
        for p, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
