"""Training objectives: noising x₀ to x_t, the UNet's ε loss (with guided-diffusion's variational term
when the network learns σ) and the noisy classifier's cross-entropy.

Every loss is per sample (shape (N,)), so a caller averages over whatever batch it holds: one
process's micro-batch, or all of them.
"""

import math

import torch
import torch.nn.functional as F


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, in x₀'s dtype."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _posterior(alphas_cumprod: torch.Tensor, t: torch.Tensor):
    """q(x_{t−1} | x_t, x₀) as (coefficient of x₀, coefficient of x_t, clipped log variance) and log β_t
    at each sample's t, from float64 tables as guided-diffusion's GaussianDiffusion builds them."""
    ac = alphas_cumprod.double()
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    betas = 1 - ac / ac_prev
    variance = betas * (1 - ac_prev) / (1 - ac)
    log_variance = torch.log(torch.cat([variance[1:2], variance[1:]]))  # t = 0's variance is 0
    coef_x0 = betas * ac_prev.sqrt() / (1 - ac)
    coef_xt = (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)
    t = t.to(ac.device)
    return coef_x0[t], coef_xt[t], log_variance[t], torch.log(betas)[t]


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit image values in [-1, 1] under a Gaussian integrated over each value's bin
    (the decoder term of the variational bound, at t = 0)."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def variational_term(var_values: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The variational bound's term at t in bits per dimension, which alone trains the learned σ: the
    network's mean (from ``eps``, which the caller detaches) against the true posterior q(x_{t−1}|x_t, x₀),
    with log σ² interpolated between the clipped posterior variance and β_t by ``var_values`` ∈ [−1, 1].
    All float32 tensors of one shape."""
    coef_x0, coef_xt, min_log, max_log = (c.to(x0.device, torch.float32)[:, None, None, None]
                                          for c in _posterior(alphas_cumprod, t))
    ac = alphas_cumprod.to(x0.device)[t].float()[:, None, None, None]
    x0_pred = x_t / ac.sqrt() - (1 / ac - 1).sqrt() * eps
    true_mean = coef_x0 * x0 + coef_xt * x_t
    model_mean = coef_x0 * x0_pred + coef_xt * x_t
    frac = (var_values + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    kl = _per_sample_mean(_normal_kl(true_mean, min_log, model_mean, model_log_var)) / math.log(2.0)
    nll = -_per_sample_mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return torch.where(t.to(x0.device) == 0, nll, kl)


def unet_loss(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Per-sample loss of a UNet output: the ε mean squared error, plus, when the output has twice the
    image's channels (learned σ), the variational term on the σ half with ε held fixed, scaled by
    T/1000: guided-diffusion's ``hybrid`` loss (Nichol & Dhariwal)."""
    channels = x0.shape[1]
    eps = out[:, :channels].float()
    loss = _per_sample_mean((eps - noise.float()) ** 2)
    if out.shape[1] == 2 * channels:
        vb = variational_term(out[:, channels:].float(), eps.detach(), x0.float(), x_t.float(), t, alphas_cumprod)
        loss = loss + vb * (len(alphas_cumprod) / 1000.0)
    return loss


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of the noisy classifier on x_t (guided-diffusion's classifier_train)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")
