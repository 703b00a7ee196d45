"""The ODE solvers against closed-form answers, and through the real pipeline.

For data drawn from N(μ, s²I) everything is known: x_t = α·x₀ + σ·ε has the law N(αμ, (α²s² + σ²)I),
the optimal denoiser is E[x₀|x_t] = μ + α·s²/(α²s² + σ²)·(x_t − αμ), and the probability-flow ODE
maps x_a to x_b affinely: x_b = α_b·μ + √(α_b²s² + σ_b²)/√(α_a²s² + σ_a²)·(x_a − α_a·μ). Each solver
runs that denoiser over finer and finer paths, both ways, and the slope of log error against log
steps must reach the solver's order.
"""

import math

import numpy as np
import pytest
import torch

from diffusions import SOLVERS, alphas_cumprod, respace, run_generation, run_inversion, sample_ddim
from diffusions.schedules import log_snr
from diffusions.solvers import invert_ddim_fixed_point

MU, S = 0.3, 0.5
# order of each solver, and where its first-order start step caps it on grids that do not begin
# where x₀ barely moves (3M: order 3 once warmed up, 2 on a uniform grid)
ORDER = {"ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "heun": 2, "pc": 3,
         "ddim-fp1": 1, "ddim-fp2": 1, "ddim-fp3": 1}
START_CAPPED = {"dpm++3m": 2}
TOLERANCE = 0.3


def abar(schedule: str, tau: float) -> float:
    """The schedules in continuous time τ ∈ [0, 1] (the library's are these at τ = t/1000)."""
    if schedule == "cosine":
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return f(tau) / f(0)
    return math.exp(-1000 * (1e-4 * tau + (0.02 - 1e-4) * tau * tau / 2))


def gaussian_denoiser(schedule: str):
    def denoise(x, t):
        a = abar(schedule, t)
        return MU + a ** 0.5 * S * S / (a * S * S + 1 - a) * (x - a ** 0.5 * MU)
    return denoise


def exact(x, a_from: float, a_to: float):
    """The ODE's map from ᾱ = a_from to ᾱ = a_to (ᾱ = 1: the data)."""
    spread = lambda a: (a * S * S + 1 - a) ** 0.5  # noqa: E731
    return a_to ** 0.5 * MU + spread(a_to) / spread(a_from) * (x - a_from ** 0.5 * MU)


def grid(schedule: str, spacing: str, n: int) -> list:
    """n increasing points (τ, ᾱ): uniform in log-SNR over τ ∈ [0.001, 0.98], or uniform in τ over
    [0.05, 0.98] (steps that vary ~20-fold in λ, without the singular λ(τ) at τ → 0)."""
    if spacing == "uniform":
        taus = np.linspace(0.05, 0.98, n)
    else:
        fine = np.linspace(1e-3, 0.98, 20001)
        lam = log_snr([abar(schedule, u) for u in fine])
        taus = np.interp(-np.linspace(lam[0], lam[-1], n), -lam, fine)
    return [(float(u), abar(schedule, float(u))) for u in taus]


def errors(solver: str, schedule: str, spacing: str, steps: list):
    x0 = MU + S * torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoise = gaussian_denoiser(schedule)
    gen, inv = [], []
    for n in steps:
        up = grid(schedule, spacing, n)
        down = up[::-1]
        out = run_generation(solver, denoise, exact(x0, 1.0, down[0][1]), down)
        gen.append((out - exact(x0, 1.0, down[-1][1])).abs().max().item())
        out = run_inversion(solver, denoise, exact(x0, 1.0, up[0][1]), up)
        inv.append((out - exact(x0, 1.0, up[-1][1])).abs().max().item())
    return gen, inv


def slope(steps, errs) -> float:
    return float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


def test_every_solver_has_a_stated_order():
    assert set(ORDER) == set(SOLVERS)


def test_continuous_schedules_are_the_librarys():
    for schedule in ("linear", "cosine"):
        ac = alphas_cumprod(schedule, 1000)
        for t in (0, 100, 500, 900, 980):
            assert abar(schedule, t / 1000) == pytest.approx(ac[t].item(), rel=0.03, abs=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["logsnr", "uniform"])
@pytest.mark.parametrize("solver", sorted(ORDER))
def test_convergence_order(solver, schedule, spacing):
    """Slopes measured (gen, inv), linear / cosine: ddim −1.0; dpm++2m −2.0; heun −2.0; pc −3.0 on
    logsnr, −2.9 on uniform; dpm++3m −4.1/−3.6 and −5.0/−3.8 on logsnr, −2.5/−2.0 on uniform;
    ddim-fpK −1.0, inversion −0.9 … −1.0."""
    order = ORDER[solver] if spacing == "logsnr" else START_CAPPED.get(solver, ORDER[solver])
    steps = [40, 80, 160, 320] if "fp" in solver else [20, 40, 80, 160] if spacing == "logsnr" else \
        [80, 160, 320, 640]
    gen, inv = errors(solver, schedule, spacing, steps)
    assert all(np.isfinite(gen + inv))
    assert slope(steps, gen) <= -(order - TOLERANCE), (gen, slope(steps, gen))
    assert slope(steps, inv) <= -(order - TOLERANCE), (inv, slope(steps, inv))


@pytest.mark.parametrize("solver", sorted(ORDER))
def test_generation_onto_the_clean_image(solver):
    """The last step lands on ᾱ = 1 (λ = +∞) without a network call there: finite, and exactly the
    x₀ prediction at the path's last noisy point (first order: higher orders have no limit there)."""
    x0 = MU + S * torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path = grid("cosine", "logsnr", 40)[::-1]
    denoise = gaussian_denoiser("cosine")
    calls = []
    counted = lambda x, t: calls.append(t) or denoise(x, t)  # noqa: E731
    out = run_generation(solver, counted, exact(x0, 1.0, path[0][1]), path + [(None, 1.0)])
    before = run_generation(solver, denoise, exact(x0, 1.0, path[0][1]), path)
    assert torch.isfinite(out).all() and None not in calls
    assert torch.allclose(out, denoise(before, path[-1][0]), rtol=0, atol=1e-12)
    assert (out - x0).abs().max().item() < 0.15


def test_fixed_point_inversion_inverts_ddim_generation():
    """More iterations bring DDIM generation ∘ inversion to the identity; enough of them reach it."""
    x0 = MU + S * torch.randn(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    up = grid("linear", "logsnr", 10)
    denoise = gaussian_denoiser("linear")
    gaps = []
    for k in (1, 2, 3, 60):  # contraction ≈ 0.6 per iteration at these steps (Δλ ≈ 1)
        latent = invert_ddim_fixed_point(denoise, x0, up, iterations=k)
        gaps.append((sample_ddim(denoise, latent, up[::-1]) - x0).abs().max().item())
    plain = (sample_ddim(denoise, sample_ddim(denoise, x0, up), up[::-1]) - x0).abs().max().item()
    assert plain > gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[3] < 1e-11
    counted = []
    invert_ddim_fixed_point(lambda x, t: counted.append(t) or denoise(x, t), x0, up, iterations=2)
    assert len(counted) == 1 + 2 * (len(up) - 1)


def test_registered_inverse_is_used_for_inversion():
    assert SOLVERS["ddim-fp2"].invert.func is invert_ddim_fixed_point
    assert SOLVERS["ddim-fp2"].solve is sample_ddim
    calls = []
    run_inversion("ddim-fp2", lambda x, t: calls.append(t) or x, torch.zeros(2), [(0, 0.99), (5, 0.9), (9, 0.5)])
    assert len(calls) == 5


def test_eta_needs_a_stochastic_solver():
    path = [(9, 0.5), (0, 0.99), (None, 1.0)]
    for solver in SOLVERS:
        if not SOLVERS[solver].stochastic:
            with pytest.raises(ValueError, match="stochastic"):
                run_generation(solver, lambda x, t: x, torch.zeros(2), path, eta=0.5)


# --- log-SNR spacing and the end timestep ---------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [3, 6, 10, 20])
def test_logsnr_spacing(schedule, steps):
    ac = alphas_cumprod(schedule, 1000)
    ts = respace("logsnr", ac, steps)
    assert ts[0] == 0 and ts[-1] == respace("uniform", 1000, steps)[-1] and len(ts) == steps
    assert all(b > a for a, b in zip(ts, ts[1:]))
    gaps = -np.diff(log_snr(ac.numpy()[ts]))
    assert gaps.max() / gaps.min() < 1.6  # uniform in λ up to rounding to whole timesteps
    assert respace("logsnr", ac, steps, t_end=950)[-1] == 950


def test_logsnr_spacing_stays_distinct_where_steps_crowd():
    ts = respace("logsnr", alphas_cumprod("cosine", 1000), 100, t_end=999)
    assert len(set(ts)) == 100 and ts[0] == 0 and ts[-1] == 999 and ts == sorted(ts)


def test_t_end_is_explicit_and_defaults_to_todays_spacing():
    for kind in ("uniform", "uniform-linspace", "uniform-trailing", "quad"):
        for steps in (5, 10, 100):
            assert respace(kind, 1000, steps, t_end=None) == respace(kind, 1000, steps)
            ts = respace(kind, 1000, steps, t_end=990)
            assert ts[-1] == 990 and len(ts) == steps and all(b > a for a, b in zip(ts, ts[1:]))
    assert respace("uniform", 1000, 5, t_end=990) == [0, 248, 495, 742, 990]
    assert respace("none", 1000, 5, t_end=9) == list(range(10))
    with pytest.raises(ValueError, match="t_end"):
        respace("uniform", 1000, 5, t_end=1000)
    with pytest.raises(ValueError, match="schedule"):
        respace("logsnr", 1000, 5)


# --- through the real pipeline -------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from utils.pipeline import DDIB

    bridge = DDIB.from_files("configs/digits.yaml", "assets/digits_unet.pt", "assets/digits_classifier.pt",
                             device="cpu", precision="no", compile=False, steps=5, clip_x0=False,
                             classifier_scale=0.0)
    from pathlib import Path
    image = sorted(Path("assets/digits/3").glob("*.png"))[0]
    return bridge, bridge.images_to_tensor([image])


@pytest.mark.parametrize("solver", sorted(s for s in ORDER if s != "ddim"))
def test_solver_translates_through_the_pipeline(digits, solver):
    bridge, x = digits
    out = bridge.translate(x, class_A=3, class_B=5, output="tensor", solver=solver, respace_type="logsnr")
    guided = bridge.translate(x, class_A=3, class_B=5, output="tensor", solver=solver, respace_type="logsnr",
                              classifier_scale=1.0)
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(guided).all()
    assert (out - x).abs().max() > 0.1 and (guided - out).abs().max() > 1e-3  # it translated; guidance acted


def test_higher_order_reconstructs_better_at_few_steps(digits):
    """On the trained model, 8 log-SNR steps to t = 950: DPM-Solver++ 2M's A→A beats DDIM's."""
    from utils.images import psnr

    bridge, x = digits
    kw = dict(steps=8, respace_type="logsnr", t_end=950)
    rec = {s: psnr(bridge.translate(x, 3, 3, output="tensor", solver=s, **kw)[0], x[0]) for s in ("ddim", "dpm++2m")}
    assert rec["dpm++2m"] > rec["ddim"] + 5 and rec["dpm++2m"] > 33, rec
    assert bridge.bridge.timesteps(bridge.bridge.with_sampling(**kw))[-1] == 950


def test_pipeline_refuses_eta_for_deterministic_solvers(digits):
    from utils.errors import UserError
    from utils.pipeline import DDIB

    bridge, x = digits
    with pytest.raises(UserError, match="stochastic"):
        bridge.translate(x, 3, 5, solver="dpm++2m", eta=0.5)
    with pytest.raises(UserError, match="stochastic"):
        DDIB.from_files("configs/digits.yaml", "assets/digits_unet.pt", device="cpu", solver="heun", eta=1.0)
    with pytest.raises(UserError, match="t_end"):
        bridge.translate(x, 3, 5, t_end=1000)


def test_cli_takes_solver_spacing_and_t_end():
    from utils.cli import build_parser, check_numbers
    from utils.errors import UserError

    args = build_parser().parse_args(["--solver", "dpm++2m", "--respace_type", "logsnr", "--t_end", "950",
                                      "--eta", "0.5"])
    assert (args.solver, args.respace_type, args.t_end) == ("dpm++2m", "logsnr", 950)
    cfg = {"diffusion": {"total_steps": 1000}, "classifier": None, "model": {}}
    with pytest.raises(UserError, match="eta"):
        check_numbers(args, cfg, cfg)
