"""benchmarks/bank_posterior.py: the posterior statistics it prints are the ones its docstring defines."""

import math

import torch

from benchmarks.bank_posterior import posterior_stats
from pipeline.world.prior import ClosedFormWorldPrior


def _bank(copies: int) -> dict[str, torch.Tensor]:
    """`copies` identical 2x2 images of caption 0 (view 0), and one other image of caption 1, over white."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 2, 2, generator=g) * 255).round().to(torch.uint8)
    images = torch.cat([a[None].expand(copies, -1, -1, -1), b[None]])
    n = copies + 1
    return {
        "images": images,
        "opacity": torch.full((n, 2, 2), 255, dtype=torch.uint8),
        "background": torch.ones(3),
        "caption": torch.tensor([0] * copies + [1]),
        "view": torch.zeros(n, dtype=torch.long),
        "mode": torch.zeros(n, dtype=torch.long),
    }


def test_identical_bank_images_count_in_full_and_a_correct_image_is_not_pulled():
    """A caption whose k bank images are one image: its posterior weights are 1/k each (ESS k exactly) at every t,
    and its posterior mean is that image, so the pull on any x0 is RMS(x0 − image): 0 on the image itself."""
    bank = _bank(copies=3)
    prior = ClosedFormWorldPrior(bank, torch.device("cpu"))
    image = bank["images"][:1].float() / 127.5 - 1
    other = torch.full_like(image, 0.25)
    x0 = torch.cat([image, other])
    emb = torch.zeros(2, 2, dtype=torch.long)
    stats = posterior_stats(prior, x0, emb, [0.02, 0.5, 0.9], torch.Generator().manual_seed(1))
    expected_pull = [0.0, ((other - image) ** 2).mean().sqrt().item()]
    for t, row in stats.items():
        assert all(math.isclose(e, 3.0, rel_tol=1e-6) for e in row["ess"]), t
        assert all(math.isclose(p, e, abs_tol=1e-6) for p, e in zip(row["pull"], expected_pull, strict=True)), t
