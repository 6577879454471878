import numpy as np
import pytest
import torch

from shared.tasks import fraud
from shared.tasks.adam import Adam


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_torch_optim_adam(weight_decay: float) -> None:
    """Same model, same batches: the hand-written update follows torch.optim.Adam step for step."""
    ours, theirs = fraud.build_model(seed=3), fraud.build_model(seed=3)
    opt_ours = Adam(ours.parameters(), lr=1e-2, weight_decay=weight_decay)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(20):
        x = torch.randn(64, len(fraud.FEATURES), generator=gen)
        y = (torch.rand(64, generator=gen) < 0.2).float()
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(ours.parameters()), next(fraud.build_model(seed=3).parameters()))
