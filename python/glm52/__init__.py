"""glm52: the GLM-5.2 model (``glm_moe_dsa``) on top of the ``glm52_ext`` kernels.

``from glm52 import GLM52Config, GLM52ForCausalLM``.
"""

from .config import GLM52Config
from .model import GLM52ForCausalLM

__all__ = ["GLM52Config", "GLM52ForCausalLM"]
