"""The Python API: ``from ddib import DDIB``. See ``utils/pipeline.py`` and the README."""

from diffusions import SOLVERS, register_solver
from models import EpsNetwork, register_family
from utils.bridge import Sampling
from utils.errors import UserError
from utils.pipeline import DDIB

__all__ = ["DDIB", "Sampling", "SOLVERS", "register_solver", "EpsNetwork", "register_family", "UserError"]
