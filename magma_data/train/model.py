"""MagmaForCausalLM: the ConvNeXt tower, the projector and stock ``LlamaForCausalLM``.

Computes what Magma's official ``MagmaForCausalLM`` (microsoft/Magma @ e373780,
``magma/modeling_magma.py``) computes on the same weights; ``benchmarks/magma_parity.py`` runs
the two side by side. Checkpoint keys are the official ones (docs/magma-model.md §Checkpoint keys):
``vision_tower.clip_vision_model.*``, ``multi_modal_projector.*``, ``language_model.*``.

The forward, as the official one:

1. ``input_ids`` are embedded with each ``<image>`` id replaced by 0;
2. every crop of every image in the batch goes through the tower in one call, then the projector;
3. each image's crops are stitched into one (rows x 16) x (cols x 16) map (for 512 crops), a
   ``row_seperator`` column is appended, and the map is flattened row-major:
   (rows x 16) x (cols x 16 + 1) features per ``<image>`` token;
4. the features replace their ``<image>`` token (``merge_image_features``), the LLM runs on the
   merged sequence, and the loss is the token mean of next-token cross-entropy over merged labels
   != -100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from magma_data.magma_text import IGNORE_INDEX

from .weights import complete_vision_config, raise_on_key_mismatch
from .config import MagmaConfig, VisionSpec
from .vision_tower import LAYER_SCALE_INIT, ConvNeXtBlock, MagmaVisionTower

#: Magma-8B is hosted in 5 GB shards; save_pretrained writes the same layout by default.
MAGMA_SHARD_SIZE = "5GB"
#: Parameters the checkpoint stores and the forward never uses (the CLIP head; the image
#: start/end separators): training leaves them frozen, as they get no gradient.
STORED_ONLY = (
    "vision_tower.clip_vision_model.trunk.head.",
    "vision_tower.clip_vision_model.head.",
    "multi_modal_projector.img_start_seperator",
    "multi_modal_projector.img_end_seperator",
)


@dataclass
class MagmaOutput(ModelOutput):
    """transformers' causal-LM output over the merged sequence (every ``<image>`` expanded):
    ``logits`` [B, L_merged, V] in float32 (the positions ``logits_to_keep`` keeps), ``loss`` with
    labels, the LLM's ``hidden_states`` / ``attentions`` when asked for, and ``attention_mask``,
    the merged sequence's mask."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    attention_mask: torch.Tensor | None = None


class MagmaProjector(nn.Module):
    """``mlp{d}x_gelu``: Linear, then (GELU, Linear) d-1 times; plus the row separator."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(spec.projector_in, spec.projector_out)]
        for _ in range(1, spec.projector_depth):
            layers += [nn.GELU(), nn.Linear(spec.projector_out, spec.projector_out)]
        self.proj = nn.Sequential(*layers)
        # spelled as in the checkpoint
        self.row_seperator = nn.Parameter(torch.zeros(1, 1, spec.projector_out))
        if spec.use_image_start_end:
            # stored by the official model when mm_use_im_start_end is set, never used in its forward
            self.img_start_seperator = nn.Parameter(torch.zeros(1, spec.projector_out))
            self.img_end_seperator = nn.Parameter(torch.zeros(1, spec.projector_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MagmaPreTrainedModel(PreTrainedModel):
    config_class = MagmaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "ConvNeXtStage"]

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, timm's layer-scale start and a zero row separator."""
        super()._init_weights(module)
        if isinstance(module, ConvNeXtBlock):
            init.constant_(module.gamma, LAYER_SCALE_INIT)
        elif isinstance(module, MagmaProjector):
            init.zeros_(module.row_seperator)
            for name in ("img_start_seperator", "img_end_seperator"):
                if hasattr(module, name):
                    init.zeros_(getattr(module, name))


class MagmaForCausalLM(MagmaPreTrainedModel, GenerationMixin):
    """Magma: ``vision_tower`` + ``multi_modal_projector`` + ``language_model`` (Llama)."""

    def __init__(self, config: MagmaConfig):
        super().__init__(config)
        self.spec = VisionSpec.from_config(config)
        self.vision_tower = MagmaVisionTower(self.spec)
        self.multi_modal_projector = MagmaProjector(self.spec)
        config.text_config._attn_implementation = config._attn_implementation or "sdpa"
        self.language_model = LlamaForCausalLM(config.text_config)
        # With no padding to tell the side (equal lengths, different image sizes), the official
        # model pads the merged sequences on the left.
        self.padding_side = "left"
        self.post_init()

    # -- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *args: Any, **kwargs: Any) -> MagmaForCausalLM:
        """Load a Magma folder (Magma-8B as hosted, or ours) with stock transformers.

        Builds on the meta device and reads the memory-mapped safetensors shards; shards already in
        the requested dtype are used without a copy. Every stored tensor must find its parameter and every parameter its
        tensor: anything else is an error naming the keys.
        """
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"{path} is not a folder: MagmaForCausalLM reads a local Magma folder; download one first "
                "(e.g. `hf download microsoft/Magma-8B --local-dir Magma-8B`)"
            )
        if kwargs.get("config") is None:
            kwargs["config"] = MagmaConfig.from_pretrained(path)
        complete_vision_config(kwargs["config"], Path(path))
        model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        raise_on_key_mismatch(path, info)
        return model

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """Write config, generation config and safetensors shards in Magma-8B's layout (5 GB shards)."""
        kwargs.setdefault("max_shard_size", MAGMA_SHARD_SIZE)
        super().save_pretrained(save_directory, *args, **kwargs)

    # -- embeddings ---------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens: int, *args: Any, **kwargs: Any) -> nn.Embedding:
        embeddings = self.language_model.resize_token_embeddings(new_num_tokens, *args, **kwargs)
        self.config.text_config.vocab_size = embeddings.num_embeddings
        return embeddings

    # -- forward ------------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Features of every image in the batch, in order: [(rows·h)·(cols·w + 1), D] each.

        ``pixel_values`` [B, crops, 3, H, W] (zero-padded crops), ``image_sizes`` [B, images, 2]
        (rows, cols per image; all-zero rows are padding), as Magma's collator makes them.
        """
        if pixel_values.dim() != 5 or image_sizes.dim() != 3:
            raise ValueError(
                f"pixel_values must be [batch, crops, 3, H, W] and image_sizes [batch, images, 2], got "
                f"{tuple(pixel_values.shape)} and {tuple(image_sizes.shape)}; for one sample from "
                "MagmaProcessor, add the batch dimension: pixel_values[None], image_sizes[None]"
            )
        grids: list[tuple[int, int]] = []
        crops = []
        for sample_crops, sizes in zip(pixel_values, image_sizes):
            sample_grids = [(int(rows), int(cols)) for rows, cols in sizes[sizes.sum(-1) > 0].tolist()]
            grids += sample_grids
            crops.append(sample_crops[: sum(rows * cols for rows, cols in sample_grids)])
        crops_flat = torch.cat(crops).to(self.vision_tower_dtype)
        if self.spec.anyres_strategy == "crop":
            return self._crop_features(crops_flat, grids)
        return self._global_features(crops_flat, grids)

    @property
    def vision_tower_dtype(self) -> torch.dtype:
        return self.vision_tower.clip_vision_model.trunk.stem[0].weight.dtype

    def _crop_features(self, crops: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """All crops through the tower at once, then each image's crops stitched back together."""
        maps = self.multi_modal_projector(self.vision_tower(crops).permute(0, 2, 3, 1))  # n h w D
        features = []
        for image_maps, (rows, cols) in zip(maps.split([r * c for r, c in grids]), grids):
            _, h, w, dim = image_maps.shape
            stitched = image_maps.view(rows, cols, h, w, dim).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, dim)
            features.append(self._with_row_separator(stitched))
        return features

    def _global_features(self, crops: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Each image's crops stitched back into one picture, encoded whole (``global``)."""
        features = []
        for image_crops, (rows, cols) in zip(crops.split([r * c for r, c in grids]), grids):
            _, channels, height, width = image_crops.shape
            picture = image_crops.view(rows, cols, channels, height, width).permute(2, 0, 3, 1, 4)
            picture = picture.reshape(1, channels, rows * height, cols * width)
            image_map = self.multi_modal_projector(self.vision_tower(picture)[0].permute(1, 2, 0))  # h w D
            features.append(self._with_row_separator(image_map))
        return features

    def _with_row_separator(self, image_map: torch.Tensor) -> torch.Tensor:
        """[H, W, D] -> [H·(W + 1), D]: the separator closes every row."""
        separator = self.multi_modal_projector.row_seperator.expand(image_map.shape[0], 1, -1)
        return torch.cat([image_map, separator.to(image_map.dtype)], dim=1).flatten(0, 1)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The LLM's input: (embeddings, attention mask, position ids, labels) of the merged sequence.

        Without images (text-only batches): the token embeddings and the inputs as given
        (position ids None, so the LLM counts positions itself, as in the official model).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_token = self.config.image_token_index
        is_image = input_ids == image_token
        token_embeddings = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        has_images = image_sizes is not None and bool((image_sizes.sum(-1) > 0).any())
        if pixel_values is None or not has_images:
            if is_image.any():
                raise ValueError(
                    f"input_ids hold {int(is_image.sum())} <image> tokens but no images were given: pass "
                    "pixel_values and image_sizes (from MagmaProcessor)"
                )
            return token_embeddings, attention_mask, None, labels
        features = self.image_features(pixel_values, image_sizes)
        return merge_image_features(
            input_ids, token_embeddings, attention_mask, labels, features, image_token, self.padding_side
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MagmaOutput:
        """One pass over whole sequences (training and scoring; ``generate`` handles decoding).

        transformers' contract: ``logits`` [B, L_merged, V] at every position by default;
        ``logits_to_keep`` (transformers' ``slice_logits_to_keep``: an int keeps the last n
        positions, 0 all of them; a tensor names positions) saves the memory of the full logits
        when only the loss is wanted (the trainer passes 1). ``inputs_embeds`` is a merged
        sequence given instead of ``input_ids`` and images.

        The loss is the official one, whatever ``logits_to_keep`` says: only the positions that
        predict a supervised token reach ``lm_head`` for it, the cross-entropy runs in the model's
        dtype, and padding is excluded by its -100 labels (the attention mask is not consulted).
        It is computed whenever ``labels`` are given; the official model computes it only in
        ``train()`` mode (and then needs a process group and wandb), which would leave validation
        without a loss.
        """
        if inputs_embeds is None:
            embeddings, attention_mask, position_ids, labels = self.embed(
                input_ids, attention_mask, pixel_values, image_sizes, labels
            )
        elif input_ids is not None or pixel_values is not None:
            raise ValueError("pass input_ids (with pixel_values) or inputs_embeds (images already merged), not both")
        else:
            embeddings, position_ids = inputs_embeds, None
            if attention_mask is None:
                attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        outputs = self.language_model.model(
            inputs_embeds=embeddings, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        )
        hidden = outputs.last_hidden_state
        lm_head = self.language_model.lm_head
        logits = lm_head(slice_logits_to_keep(hidden, logits_to_keep)).float()
        loss = None
        if labels is not None:
            supervised = labels[:, 1:] != IGNORE_INDEX
            supervised_logits = lm_head(hidden[:, :-1][supervised])
            loss = nn.functional.cross_entropy(supervised_logits, labels[:, 1:][supervised].to(hidden.device))
        return MagmaOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            attention_mask=attention_mask,
        )

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """``input_ids`` followed by the generated ids, as Magma's README expects.

        The merged prompt (images expanded) is embedded once and handed to the stock
        ``LlamaForCausalLM.generate`` with its position ids, so greedy search, sampling and the
        KV cache are transformers' own. Batches are merged left-padded, as generation needs.
        """
        embeddings, mask, position_ids, _ = self.embed(input_ids, attention_mask, pixel_values, image_sizes)
        if position_ids is None:
            position_ids = (mask.long().cumsum(-1) - 1).masked_fill_(mask == 0, 1)
        # decode with Magma's generation_config.json (bos, eos, pad), not the one Llama derives
        self.language_model.generation_config = self.generation_config
        new_tokens = self.language_model.generate(
            inputs_embeds=embeddings, attention_mask=mask, position_ids=position_ids, **generate_kwargs
        )
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)


def merge_image_features(
    input_ids: torch.Tensor,
    token_embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    features: list[torch.Tensor],
    image_token: int,
    padding_side: str = "left",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace each ``<image>`` token by its image's features (the official LLaVA-NeXT-style merge).

    Returns the merged embeddings [B, L', D], mask [B, L'] (the input mask's dtype), position ids
    (``cumsum(mask) - 1``, 1 at padding) and labels (-100 on image features and padding).
    Tokens whose mask is 0 are dropped and the merged sequences re-padded with zero embeddings,
    on the side the input was padded on; unpadded batches take ``padding_side``.

    One deliberate difference: the official merge treats a batch of one as left-padded even when
    its padding is on the right, and then writes tokens at negative (wrapped) positions; here
    the side is read from the mask for every batch size. Where the official result is defined,
    the two agree.
    """
    batch, _ = input_ids.shape
    is_image = input_ids == image_token
    if int(is_image.sum()) != len(features):
        raise ValueError(
            f"the text holds {int(is_image.sum())} {image_token=} tokens but {len(features)} images were "
            "given; each image needs exactly one <image> token in its sample's text"
        )
    feature_lengths = torch.tensor([len(f) for f in features], device=input_ids.device)
    # width of each token in the merged sequence: an <image> token becomes its features
    widths = torch.ones_like(input_ids)
    widths[is_image] = feature_lengths
    last_slot = widths.cumsum(-1) - 1
    images_per_sample = is_image.sum(-1).tolist()
    features_per_sample = torch.stack([lengths.sum() for lengths in feature_lengths.split(images_per_sample)])
    merged_lengths = (attention_mask == 1).sum(-1) - is_image.sum(-1) + features_per_sample
    total = int(merged_lengths.max())

    pad_left = _padding_is_left(attention_mask, padding_side)
    if pad_left:
        last_slot = last_slot + (total - 1 - last_slot[:, -1:])
    sample, token = torch.where(~is_image & (attention_mask == 1))
    slot = last_slot[sample, token]

    embeddings = token_embeddings.new_zeros(batch, total, token_embeddings.shape[-1])
    embeddings[sample, slot] = token_embeddings[sample, token]
    mask = attention_mask.new_zeros(batch, total)
    mask[sample, slot] = attention_mask[sample, token]
    merged_labels = None
    if labels is not None:
        merged_labels = torch.full((batch, total), IGNORE_INDEX, dtype=torch.long, device=labels.device)
        merged_labels[sample, slot] = labels[sample, token]

    position = torch.arange(total, device=input_ids.device).expand(batch, total)
    in_sequence = position >= (total - merged_lengths[:, None]) if pad_left else position < merged_lengths[:, None]
    image_slots = in_sequence.clone()
    image_slots[sample, slot] = False
    stacked = torch.cat(features)
    if int(image_slots.sum()) != len(stacked):
        raise ValueError(
            f"{int(image_slots.sum())} image positions for {len(stacked)} image features: an <image> token "
            "sits where the attention mask is 0, or the mask has holes"
        )
    embeddings[image_slots] = stacked.to(embeddings.dtype)
    mask = mask | image_slots
    position_ids = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
    return embeddings, mask, position_ids, merged_labels


def _padding_is_left(attention_mask: torch.Tensor, padding_side: str) -> bool:
    padded_left = bool((attention_mask[:, 0] == 0).any())
    padded_right = bool((attention_mask[:, -1] == 0).any())
    if padded_left and padded_right:
        raise ValueError("the attention mask has padding on both sides; pad every sample on the same side")
    if padded_left or padded_right:
        return padded_left
    return padding_side == "left"
