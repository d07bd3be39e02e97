"""magma-train: Magma in our own code, loading and saving the Magma-8B layout with stock transformers.

``MagmaForCausalLM`` (model.py, vision_tower.py) and ``MagmaProcessor`` (processor.py) compute
what Magma's official code computes (``benchmarks/magma_parity.py`` checks it side by side);
``magma-train init`` (cli.py, create.py) writes new Magma folders. Needs the ``train`` extra.
"""

from .config import MagmaConfig
from .model import MagmaForCausalLM
from .processor import MagmaImageProcessor, MagmaProcessor

__all__ = ["MagmaConfig", "MagmaForCausalLM", "MagmaImageProcessor", "MagmaProcessor"]
