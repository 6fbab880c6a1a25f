"""tpjax: learned token pruning for transformer encoders in JAX/Flax."""

from tpjax.models.pretrained import load_pretrained

__version__ = "0.1.0"
__all__ = ["load_pretrained"]
