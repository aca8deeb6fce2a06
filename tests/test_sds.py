"""SDS against an analytic denoiser: data ~ N(μ_y, s² I) has ε̂(z_t; y) = σ_t (z_t − α_t μ_y) / (α_t² s² + σ_t²)."""

import math

import pytest
import torch

from pipeline.config import GuidanceConfig, ScheduleConfig
from pipeline.guidance.base import Guidance
from pipeline.sds import TimestepSchedule, cfg_combine, sds, sds_from_x, weighting


class GaussianGuidance(Guidance):
    """Exact ε̂ for Gaussian data; embedding k selects the mean μ_k (k = 0 is the unconditional one)."""

    kind = "pixel"

    def __init__(self, means: torch.Tensor, s: float, T: int = 1000) -> None:
        super().__init__()
        self.means, self.s = means, s
        betas = torch.linspace(1e-4, 2e-2, T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls = 0

    def _encode_text(self, texts):
        return torch.tensor([int(t) for t in texts])

    def encode(self, images):
        return images * 2 - 1

    def eps(self, z, t, k):
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, sig = ab.sqrt(), (1 - ab).sqrt()
        return sig * (z - a * self.means[k]) / (a**2 * self.s**2 + sig**2)

    def predict_noise(self, z_t, t, cond, uncond):
        self.calls += 1
        return self.eps(z_t, t, cond), self.eps(z_t, t, uncond)


@pytest.fixture
def gauss():
    torch.manual_seed(0)
    means = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5), torch.rand(3, 4, 4) - 0.5])
    return GaussianGuidance(means, s=0.3)


@pytest.mark.parametrize("weight", ["sds", "uniform", "fantasia3d"])
@pytest.mark.parametrize(("convention", "scale"), [("dreamfusion", 0.0), ("dreamfusion", 7.0), ("diffusers", 7.5)])
def test_gradient_is_closed_form(gauss, weight, convention, scale):
    cfg = GuidanceConfig(scale=scale, convention=convention, weighting=weight)
    x = (torch.rand(2, 3, 4, 4) - 0.5).requires_grad_(True)
    t = torch.tensor([37, 812])
    noise = torch.randn(2, 3, 4, 4)
    cond, uncond = gauss.embed(["1", "2"]), gauss.embed(["0", "0"])
    out = sds_from_x(gauss, x, cond, uncond, t, noise, cfg)
    out.loss.backward()

    ab = gauss.alphas_cumprod[t].view(-1, 1, 1, 1).double()
    a, sig = ab.sqrt(), (1 - ab).sqrt()
    z = a * x.detach().double() + sig * noise.double()
    v = a**2 * gauss.s**2 + sig**2
    e_c = sig * (z - a * gauss.means[[1, 2]].double()) / v
    e_u = sig * (z - a * gauss.means[[0, 0]].double()) / v
    e_hat = e_c + scale * (e_c - e_u) if convention == "dreamfusion" else e_u + scale * (e_c - e_u)
    w = {"sds": 1 - ab, "uniform": torch.ones_like(ab), "fantasia3d": ab.sqrt() * (1 - ab)}[weight]
    expected = w * (e_hat - noise.double())
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.grad.double(), expected, rtol=1e-4, atol=1e-5)
    assert out.score_norm.shape == (2,) and torch.equal(out.t, t)


def test_cfg_conventions_coincide_at_s_equals_omega_plus_one():
    ec, eu = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(cfg_combine(ec, eu, 100.0, "dreamfusion"), cfg_combine(ec, eu, 101.0, "diffusers"))
    torch.testing.assert_close(cfg_combine(ec, eu, 0.0, "dreamfusion"), ec)
    torch.testing.assert_close(cfg_combine(ec, eu, 1.0, "diffusers"), ec)
    with pytest.raises(ValueError, match="unknown CFG convention"):
        cfg_combine(ec, eu, 1.0, "imagen")


def test_weightings():
    ab = torch.tensor([0.25, 0.81])
    torch.testing.assert_close(weighting("sds", ab), torch.tensor([0.75, 0.19]))
    torch.testing.assert_close(weighting("uniform", ab), torch.ones(2))
    torch.testing.assert_close(weighting("fantasia3d", ab), torch.tensor([0.5 * 0.75, 0.9 * 0.19]))


@pytest.mark.parametrize(("convention", "scale"), [("dreamfusion", 2.0), ("diffusers", 3.0)])
def test_optimising_with_sds_converges_to_the_cfg_fixed_point(gauss, convention, scale):
    """E_ε[ε̂ − ε] ∝ x − x*, so SDS descent converges to x* = μ_c + ω(μ_c − μ_u) (dreamfusion) or
    x* = s μ_c + (1 − s) μ_u (diffusers), the same point for every t."""
    torch.manual_seed(1)
    cfg = GuidanceConfig(scale=scale, convention=convention, weighting="uniform")
    mu_c, mu_u = gauss.means[1], gauss.means[0]
    target = mu_c + scale * (mu_c - mu_u) if convention == "dreamfusion" else scale * mu_c + (1 - scale) * mu_u
    x = torch.zeros(1, 3, 4, 4, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.05)
    cond, uncond = gauss.embed(["1"]), gauss.embed(["0"])
    g = torch.Generator().manual_seed(0)
    avg = torch.zeros_like(x)
    for i in range(3000):
        t = torch.randint(20, 980, (1,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        opt.zero_grad()
        sds_from_x(gauss, x, cond, uncond, t, noise, cfg).loss.backward()
        opt.step()
        if i >= 2000:
            avg += x.detach() / 1000
    torch.testing.assert_close(avg[0], target, atol=0.05, rtol=0)


def test_score_clipping_bounds_the_score(gauss):
    cfg = GuidanceConfig(scale=50.0, weighting="uniform", score_clip=[0, 0.1, 1.0, 100])
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    out = sds_from_x(
        gauss, x, gauss.embed(["1"]), gauss.embed(["0"]), torch.tensor([500]), torch.randn(1, 3, 4, 4), cfg, step=50
    )
    assert out.grad.abs().max() <= 0.55 + 1e-6 and out.score_norm.item() > 0.55


def test_gradient_reaches_render_not_denoiser(tmp_path):
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance
    from tests.tiny_models import save_tiny_sd

    g = StableDiffusionGuidance(str(save_tiny_sd(tmp_path / "sd")), torch.device("cpu"), torch.float32, 16)
    params = torch.rand(1, 3, 8, 8, requires_grad=True)
    render = torch.nn.functional.interpolate(params, (16, 16), mode="bilinear")
    out = sds(
        g,
        render,
        g.embed(["a red cube"]),
        g.embed([""]),
        torch.tensor([500]),
        GuidanceConfig(scale=7.0),
        generator=torch.Generator().manual_seed(0),
    )
    out.loss.backward()
    assert params.grad is not None and params.grad.abs().sum() > 0
    for module in (g.unet, g.vae, g.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


# ---------------------------------------------------------------- schedules

ALPHAS = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0).float()


def test_uniform_stays_in_bounds_and_covers_them():
    s = TimestepSchedule(ScheduleConfig(t_min=0.02, t_max=0.98), ALPHAS, 100)
    t = s(0, 20000, torch.Generator().manual_seed(0))
    assert t.min() == 20 and t.max() == 980
    assert abs(t.float().mean().item() - 500) < 5


def test_anneal_interpolates_t_max():
    s = TimestepSchedule(ScheduleConfig(name="anneal", t_max=[100, 0.98, 0.5, 300]), ALPHAS, 400)
    assert s.bounds(0) == (20, 980)
    assert s.bounds(200) == (20, int(1000 * 0.74))
    assert s.bounds(300) == (20, 500) == s.bounds(399)
    assert s(350, 5000, torch.Generator().manual_seed(0)).max() <= 500


def test_step_schedule_switches():
    s = TimestepSchedule(ScheduleConfig(name="step", switch_step=10, t_max_after=0.5), ALPHAS, 20)
    assert s.bounds(9) == (20, 980) and s.bounds(10) == (20, 500)


def test_hifa_matches_formula_and_is_monotone():
    N = 101
    s = TimestepSchedule(ScheduleConfig(name="hifa", t_min=0.3, t_max=0.98), ALPHAS, N)
    ts = [int(s(i, 1)[0]) for i in range(N)]
    for i in (0, 25, 50, 100):
        assert ts[i] == round(1000 * (0.3 + 0.68 * (1 - math.sqrt(i / 100))))
    assert ts[0] == 980 and ts[-1] == 300
    assert all(a >= b for a, b in zip(ts, ts[1:], strict=False))
    assert all(300 <= t <= 980 for t in ts)


def test_dreamtime_follows_the_prior():
    N = 201
    cfg = ScheduleConfig(name="dreamtime")
    s = TimestepSchedule(cfg, ALPHAS, N)
    ts = torch.tensor([int(s(i, 3)[0]) for i in range(N)])
    assert (ts[:-1] >= ts[1:]).all() and ts.min() >= 20 and ts.max() <= 980
    # reference: the tail-sum rule computed independently in float64
    t = torch.arange(1000, dtype=torch.float64)
    wp = torch.where(
        t > 800,
        torch.exp(-((t - 800) ** 2) / (2 * 300**2)),
        torch.where(t < 500, torch.exp(-((t - 500) ** 2) / (2 * 100**2)), torch.ones_like(t)),
    )
    ab = ALPHAS.double()
    p = wp * (1 - ab)
    p[:20] = 0
    p[981:] = 0
    p /= p.sum()
    for i in (0, 50, 100, 150, 200):
        target = i / (N - 1)
        tail = torch.tensor([p[k:].sum() for k in range(1000)])
        assert abs(int(ts[i]) - min(max(int((tail - target).abs().argmin()), 20), 980)) <= 1
    # the prior concentrates steps where it is flat: most steps land in [500, 800]
    assert ((ts >= 500) & (ts <= 800)).float().mean() > 0.5


def test_a_nan_pixel_from_the_denoiser_is_zeroed_and_counted(gauss):
    """One NaN pixel (an fp16 overflow) used to make the whole SDS gradient, and then the run, NaN."""

    class NaNPixel(GaussianGuidance):
        def predict_noise(self, z_t, t, cond, uncond):
            eps_c, eps_u = super().predict_noise(z_t, t, cond, uncond)
            eps_c = eps_c.clone()
            eps_c[0, 1, 2, 3] = float("nan")
            return eps_c, eps_u

    g = NaNPixel(gauss.means, gauss.s)
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    noise = torch.randn(2, 3, 4, 4)
    args = (g.embed(["1", "1"]), g.embed(["0", "0"]), torch.tensor([500, 500]), noise, GuidanceConfig(scale=10.0))
    out = sds_from_x(g, x, *args)
    out.loss.backward()
    assert out.nonfinite.sum().item() == 1 and out.grad[0, 1, 2, 3] == 0
    assert torch.isfinite(x.grad).all() and torch.isfinite(out.loss)
    clean = sds_from_x(gauss, x.detach(), *args)  # every other pixel is untouched
    mask = torch.ones_like(clean.grad, dtype=torch.bool)
    mask[0, 1, 2, 3] = False
    assert torch.equal(out.grad[mask], clean.grad[mask]) and clean.nonfinite.sum().item() == 0
