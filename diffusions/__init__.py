"""Schedules, DDIM samplers and the DDIB translation built on them."""

from .ddib import classifier_grad, eps_from_model, generate, invert, translate
from .samplers import ddim_invert, ddim_sample
from .schedules import BETA_SCHEDULES, RESPACE_TYPES, alphas_cumprod, get_betas, respace

__all__ = ["alphas_cumprod", "get_betas", "respace", "BETA_SCHEDULES", "RESPACE_TYPES", "ddim_invert",
           "ddim_sample", "eps_from_model", "classifier_grad", "invert", "generate", "translate"]
