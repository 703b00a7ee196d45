"""From a network's prediction to the denoiser the solvers call, and the wrappers that steer it.

Solvers only see ``denoise(x, t) -> x₀``. A network predicts ε, v or x₀ itself (its
``prediction_type``); ``model_denoiser`` turns any of them into x₀. Classifier-free guidance mixes
the conditional and the null-class predictions (one batched call), clipping x₀ to [-1, 1] and
classifier guidance are wrappers, applied in guided-diffusion's order (clip, then shift ε by the
classifier's gradient), so every solver gets them without knowing of them.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .solvers import Denoiser, coefficients

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _predict(net, x: torch.Tensor, t: int, y: Optional[torch.Tensor]) -> torch.Tensor:
    """The network's raw prediction at step t. A non-finite one (fp16 overflow gives ±inf) becomes
    NaN: clipping x₀ would turn ±inf into a finite but wrong image, while NaN survives to the end,
    where the image is caught and redone or reported."""
    ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return net(x, ts, y).nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=float("nan"))


def eps_from_model(model, y: Optional[torch.Tensor]) -> EpsFn:
    """ε(x, t) from an ε-predicting network (``models.as_network`` decides how to read it)."""
    from models.network import as_network

    net = as_network(model)
    return lambda x, t: _predict(net, x, t, y)


def to_x0(prediction_type: str, x: torch.Tensor, out: torch.Tensor, a: float) -> torch.Tensor:
    """x₀ from a prediction at ᾱ = a: ε → √(1/ᾱ)·x − √(1/ᾱ − 1)·ε; v = √ᾱ·ε − √(1−ᾱ)·x₀ →
    x₀ = √ᾱ·x − √(1−ᾱ)·v; a sample prediction is x₀ itself."""
    if prediction_type == "epsilon":
        recip, recipm1 = coefficients(a)
        return recip * x - recipm1 * out
    if prediction_type == "v_prediction":
        return a ** 0.5 * x - (1.0 - a) ** 0.5 * out
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def model_denoiser(model, y: Optional[torch.Tensor], alphas_cumprod: torch.Tensor) -> Denoiser:
    """x₀(x, t) of a network conditioned on ``y`` (None: unconditional), whatever it predicts."""
    from models.network import as_network

    net = as_network(model)
    kind = getattr(net, "prediction_type", "epsilon")
    return lambda x, t: to_x0(kind, x, _predict(net, x, t, y), alphas_cumprod[t].item())


def classifier_free(model, y: torch.Tensor, scale: float, alphas_cumprod: torch.Tensor) -> Denoiser:
    """Classifier-free guidance: p = p(x, ∅) + scale·(p(x, y) − p(x, ∅)) on every channel of the
    prediction (ε of all latent channels for DiT), with ∅ the network's null class. The conditional and
    null predictions come from one call on the doubled batch. Guiding the prediction is guiding ε and
    x₀: both are affine in it with the same coefficients."""
    from models.network import as_network

    net = as_network(model)
    if getattr(net, "null_class", None) is None:
        raise ValueError("classifier-free guidance needs a model with a null class")
    kind = net.prediction_type

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        both = _predict(net, torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, net.null_class)]))
        cond, uncond = both.chunk(2)
        return to_x0(kind, x, uncond + scale * (cond - uncond), alphas_cumprod[t].item())

    return denoise


def clipped(denoise: Denoiser) -> Denoiser:
    """x₀ clipped to the image range [-1, 1]."""
    return lambda x, t: denoise(x, t).clamp(-1, 1)


def classifier_grad(classifier: torch.nn.Module, y: torch.Tensor, scale: float) -> EpsFn:
    """scale · ∇ₓ log softmax(classifier(x, t))[y], the classifier-guidance term."""

    def grad_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            log_probs = F.log_softmax(classifier(x_in, ts).float(), dim=-1)
            selected = log_probs[torch.arange(len(y), device=y.device), y]
            return torch.autograd.grad(selected.sum(), x_in)[0].float() * scale

    return grad_fn


def guided(denoise: Denoiser, grad_fn: EpsFn, alphas_cumprod: torch.Tensor) -> Denoiser:
    """Classifier guidance, as guided-diffusion's ``condition_score``: ε ← ε − √(1−ᾱ_t)·grad, with ε
    read back from the (clipped) x₀ prediction."""

    def denoise_guided(x: torch.Tensor, t: int) -> torch.Tensor:
        a = alphas_cumprod[t].item()
        recip, recipm1 = coefficients(a)
        eps = (recip * x - denoise(x, t)) / recipm1 - (1 - a) ** 0.5 * grad_fn(x, t)
        return recip * x - recipm1 * eps

    return denoise_guided
