"""MagmaConfig: Magma-8B's ``config.json`` as it is, read and written with stock transformers.

The file holds a Llama ``text_config``, a free-form ``vision_config`` dict and
``image_token_index`` (docs/magma-model.md §Config fields). Magma's official code reads only a few keys of
``vision_config``; we add the ConvNeXt structure (``convnext_depths``, ``convnext_dims``,
``clip_embed_dim``) so a checkpoint describes its own tower. When a folder lacks them (Magma-8B's
does), ``MagmaForCausalLM.from_pretrained`` reads them from the checkpoint's tensor shapes
(``weights.tower_structure``), never from the backbone's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, LlamaConfig, PretrainedConfig

# Values of Magma-8B's tower that tensor shapes cannot tell: open_clip's convnext_xxlarge config
# (timm ``norm_eps`` 1e-5, ``timm_drop_path`` 0.1 spread linearly over the blocks by timm).
DEFAULT_LAYER_NORM_EPS = 1e-5
DEFAULT_DROP_PATH_RATE = 0.1
#: The ConvNeXt stem's patch size.
STEM_PATCH = 4
#: Magma-8B's tower, open_clip convnext_xxlarge (docs/magma-model.md §Architecture); the official code builds the
#: tower from the name ``vision_backbone``, so our checkpoints with this structure carry it too.
CONVNEXT_XXLARGE = {"convnext_depths": [3, 4, 30, 3], "convnext_dims": [384, 768, 1536, 3072], "clip_embed_dim": 1024}
XXLARGE_BACKBONE = "convnextxxlarge"
#: The vision_config keys that describe the tower's structure.
TOWER_STRUCTURE_KEYS = tuple(CONVNEXT_XXLARGE)
#: The vision_config Magma's train.py writes (crop strategy, 2-layer GELU projector), less the
#: tower structure, which comes from the weights.
MAGMA_VISION_SETTINGS = {
    "img_size": 512,
    "img_anyres_strategy": "crop",
    "mm_projector_type": "mlp2x_gelu",
    "vision_feature_layer": "clip_vis_dense",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_use_im_patch_token": False,
}


@dataclass(frozen=True)
class VisionSpec:
    """The parts of ``vision_config`` our model reads, with the official code's defaults."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    clip_embed_dim: int
    layer_norm_eps: float
    drop_path_rate: float
    projector_depth: int
    projector_in: int
    projector_out: int
    anyres_strategy: str
    use_image_start_end: bool

    @classmethod
    def from_config(cls, config: MagmaConfig) -> VisionSpec:
        vision = config.vision_config
        missing = [key for key in TOWER_STRUCTURE_KEYS if key not in vision]
        if missing:
            raise ValueError(
                f"vision_config has no {', '.join(missing)}: the ConvNeXt's depths and widths are read "
                "from the checkpoint by MagmaForCausalLM.from_pretrained(path); to build a model from a "
                "config alone, set them (e.g. convnext_depths=[3, 4, 30, 3], convnext_dims=[384, 768, "
                "1536, 3072], clip_embed_dim=1024 for Magma-8B's convnext_xxlarge)"
            )
        projector_type = vision.get("mm_projector_type", "linear")
        match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
        if not match:
            # The official code builds no projection for any other type and fails in its forward.
            raise ValueError(
                f"mm_projector_type {projector_type!r} is not supported: Magma's projector is "
                "'mlp{d}x_gelu' (Magma-8B: 'mlp2x_gelu')"
            )
        dims = tuple(int(d) for d in vision["convnext_dims"])
        projector_in = int(vision.get("mm_hidden_size", dims[-1]))
        if projector_in != dims[-1]:
            raise ValueError(
                f"vision_config mm_hidden_size {projector_in} differs from the tower's width {dims[-1]}; "
                "the projector reads the last ConvNeXt stage, so they must match"
            )
        strategy = vision.get("img_anyres_strategy", "crop")
        if strategy not in ("crop", "global"):
            raise ValueError(f"img_anyres_strategy must be 'crop' or 'global', got {strategy!r}")
        return cls(
            depths=tuple(int(d) for d in vision["convnext_depths"]),
            dims=dims,
            clip_embed_dim=int(vision["clip_embed_dim"]),
            layer_norm_eps=float(vision.get("layer_norm_eps", DEFAULT_LAYER_NORM_EPS)),
            drop_path_rate=float(vision.get("drop_path_rate", DEFAULT_DROP_PATH_RATE)),
            projector_depth=int(match.group(1)),
            projector_in=projector_in,
            projector_out=int(vision.get("hidden_size", config.text_config.hidden_size)),
            anyres_strategy=strategy,
            use_image_start_end=bool(vision.get("mm_use_im_start_end", False)),
        )


class MagmaConfig(PretrainedConfig):
    """Magma's configuration: ``text_config`` (Llama), ``vision_config`` (dict), ``image_token_index``.

    Written with an explicit ``__init__`` like Magma's own (and any remote-code config), which
    stock transformers 5 keeps accepting; unknown top-level keys of Magma-8B's ``config.json``
    are kept as attributes and written back unchanged.
    """

    model_type = "magma"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | None = None,
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        image_token_index: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ):
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "llama")
            if model_type != "llama":
                raise ValueError(f"text_config model_type {model_type!r}: Magma's language model is Llama")
            _drop_null_rope_scaling(text_config)
            text_config = LlamaConfig(**text_config)
        self.text_config = text_config if text_config is not None else LlamaConfig()
        self.vision_config = dict(vision_config or {})
        self.image_token_index = image_token_index
        _drop_null_rope_scaling(kwargs)  # Magma-8B copies the Llama fields to the top level too
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Also writes the text config's RoPE as ``rope_theta`` / ``rope_scaling``.

        transformers 5 writes only ``rope_parameters``; Magma's code (transformers 4.4x) would
        read a missing ``rope_theta`` as Llama's default 10000 instead of Magma-8B's 500000.
        """
        output = super().to_dict()
        text = output["text_config"]
        rope = dict(text.get("rope_parameters") or {})
        if "rope_theta" in rope:
            text["rope_theta"] = rope.pop("rope_theta")
            text["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
        return output


def _drop_null_rope_scaling(fields: dict[str, Any]) -> None:
    """``rope_scaling: null`` is transformers 4's "no scaling"; transformers 5 warns on the key."""
    if "rope_scaling" in fields and fields["rope_scaling"] is None:
        del fields["rope_scaling"]


# Lets AutoConfig (and AutoTokenizer, which reads config.json) recognise Magma folders.
AutoConfig.register(MagmaConfig.model_type, MagmaConfig, exist_ok=True)
