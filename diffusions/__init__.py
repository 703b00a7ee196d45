"""Schedules, ODE solvers over a denoiser, and the DDIB translation built on them."""

from .ddib import generate, invert, translate
from .denoisers import (PREDICTION_TYPES, classifier_free, classifier_grad, clipped, eps_from_model, guided,
                        model_denoiser, to_x0)
from .schedules import (BETA_SCHEDULES, RESPACE_TYPES, alphas_cumprod, diffusers_alphas_cumprod, get_betas, respace,
                        schedule_alphas)
from .solvers import (SOLVERS, generation_path, get_solver, inversion_path, register_solver, run_generation,
                      run_inversion, sample_ddim)

__all__ = ["alphas_cumprod", "get_betas", "respace", "BETA_SCHEDULES", "RESPACE_TYPES", "SOLVERS",
           "register_solver", "get_solver", "sample_ddim", "run_inversion", "run_generation",
           "generation_path", "inversion_path", "eps_from_model", "clipped", "guided",
           "classifier_grad", "invert", "generate", "translate", "model_denoiser", "classifier_free", "to_x0",
           "PREDICTION_TYPES", "diffusers_alphas_cumprod", "schedule_alphas"]
