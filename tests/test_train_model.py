"""MagmaForCausalLM: Magma-8B's tensor layout, the image merge, loss, generation, checkpointing."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from train_fixtures import batch_of_one, chat, picture, redraw_weights, tiny_magma

from magma_data.magma_text import IGNORE_INDEX
from magma_data.train import MagmaConfig, MagmaForCausalLM, MagmaProcessor
from magma_data.train.config import CONVNEXT_XXLARGE, MAGMA_VISION_SETTINGS
from magma_data.train.model import merge_image_features

TOWER = "vision_tower.clip_vision_model."
DIMS = [384, 768, 1536, 3072]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_magma(tmp_path_factory)


@pytest.fixture(scope="module")
def processor(tiny):
    return MagmaProcessor.from_pretrained(tiny)


@pytest.fixture()
def model(tiny):
    return redraw_weights(MagmaForCausalLM.from_pretrained(tiny), seed=1).eval()


def magma_8b_on_meta(vocab_size: int = 128258) -> MagmaForCausalLM:
    config = MagmaConfig(
        vision_config={**MAGMA_VISION_SETTINGS, **CONVNEXT_XXLARGE, "vision_backbone": "convnextxxlarge"},
        text_config={
            "vocab_size": vocab_size, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": False,
        },
        image_token_index=128257,
    )
    with torch.device("meta"):
        return MagmaForCausalLM(config).to(torch.bfloat16)


def expected_8b_table(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """docs/magma-model.md §Checkpoint keys, written out key by key."""
    table = {
        TOWER + "trunk.stem.0.weight": (384, 3, 4, 4), TOWER + "trunk.stem.0.bias": (384,),
        TOWER + "trunk.stem.1.weight": (384,), TOWER + "trunk.stem.1.bias": (384,),
        TOWER + "trunk.head.norm.weight": (3072,), TOWER + "trunk.head.norm.bias": (3072,),
        TOWER + "head.proj.weight": (1024, 3072),
        "multi_modal_projector.proj.0.weight": (4096, 3072), "multi_modal_projector.proj.0.bias": (4096,),
        "multi_modal_projector.proj.2.weight": (4096, 4096), "multi_modal_projector.proj.2.bias": (4096,),
        "multi_modal_projector.row_seperator": (1, 1, 4096),
        "language_model.model.embed_tokens.weight": (vocab_size, 4096),
        "language_model.model.norm.weight": (4096,), "language_model.lm_head.weight": (vocab_size, 4096),
    }
    for stage, depth in enumerate([3, 4, 30, 3]):
        dim = DIMS[stage]
        prefix = f"{TOWER}trunk.stages.{stage}."
        if stage:
            table |= {
                prefix + "downsample.0.weight": (DIMS[stage - 1],), prefix + "downsample.0.bias": (DIMS[stage - 1],),
                prefix + "downsample.1.weight": (dim, DIMS[stage - 1], 2, 2), prefix + "downsample.1.bias": (dim,),
            }
        for block in range(depth):
            b = f"{prefix}blocks.{block}."
            table |= {
                b + "gamma": (dim,), b + "conv_dw.weight": (dim, 1, 7, 7), b + "conv_dw.bias": (dim,),
                b + "norm.weight": (dim,), b + "norm.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
            }
    for layer in range(32):
        p = f"language_model.model.layers.{layer}."
        table |= {
            p + "self_attn.q_proj.weight": (4096, 4096), p + "self_attn.k_proj.weight": (1024, 4096),
            p + "self_attn.v_proj.weight": (1024, 4096), p + "self_attn.o_proj.weight": (4096, 4096),
            p + "mlp.gate_proj.weight": (14336, 4096), p + "mlp.up_proj.weight": (14336, 4096),
            p + "mlp.down_proj.weight": (4096, 14336), p + "input_layernorm.weight": (4096,),
            p + "post_attention_layernorm.weight": (4096,),
        }
    return table


def test_magma_8b_keys_and_shapes_on_the_meta_device_match_the_reference_table():
    state = magma_8b_on_meta().state_dict()

    assert {key: tuple(value.shape) for key, value in state.items()} == expected_8b_table(128258)
    gamma_per_stage = Counter(re.search(r"stages\.(\d)", key).group(1) for key in state if key.endswith(".gamma"))
    assert gamma_per_stage == {"0": 3, "1": 4, "2": 30, "3": 3}
    count = lambda prefix: sum(value.numel() for key, value in state.items() if key.startswith(prefix))  # noqa: E731
    assert count(TOWER + "trunk.st") == 843_391_872  # stem + stages, as open_clip's convnext_xxlarge
    assert count(TOWER) == 846_543_744
    assert count("multi_modal_projector.") == 29_372_416


def test_magma_8b_in_bf16_shards_at_5gb_into_the_four_files_microsoft_hosts():
    state = magma_8b_on_meta().state_dict()
    plan = split_torch_state_dict_into_shards(state, max_shard_size="5GB")  # what save_pretrained uses
    sizes = [
        round(sum(state[key].numel() * 2 for key in keys) / 1e9, 2) for _, keys in sorted(plan.filename_to_tensors.items())
    ]
    assert sizes == [4.98, 5.00, 4.92, 2.91]  # the sizes of Magma-8B's model-0000{1..4}-of-00004.safetensors


def test_each_image_token_becomes_rows_x_16_by_cols_x_16_plus_one_features(model, processor):
    one_crop = batch_of_one(processor, picture(512, 512), chat(processor))
    four_crops = batch_of_one(processor, picture(1024, 1024), chat(processor))
    text_tokens = one_crop["input_ids"].shape[1] - 1

    with torch.no_grad():
        assert model(**one_crop).logits.shape[1] == text_tokens + 16 * 17  # 272 for one 512 crop
        assert four_crops["image_sizes"].tolist() == [[[2, 2]]]
        assert model(**four_crops).logits.shape[1] == text_tokens + 32 * 33  # 1056 for 2 x 2 crops


def test_a_tiny_forward_and_backward_reach_every_part_that_trains(model, processor):
    inputs = batch_of_one(processor, picture(640, 480), chat(processor))
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] // 2] = IGNORE_INDEX
    labels[labels == model.config.image_token_index] = IGNORE_INDEX  # image positions never carry a label
    model.train()

    output = model(**inputs, labels=labels)
    output.loss.backward()

    assert output.logits.shape == (1, output.attention_mask.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(output.loss)
    for name in [
        TOWER + "trunk.stem.0.weight",
        TOWER + "trunk.stages.2.blocks.1.gamma",
        "multi_modal_projector.proj.0.weight",
        "multi_modal_projector.row_seperator",
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
    ]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_the_loss_is_the_token_mean_over_labels_shifted_inside_the_merged_sequence(model, processor):
    inputs = batch_of_one(processor, picture(300, 600), chat(processor))
    labels = inputs["input_ids"].clone()
    labels[:, :-6] = IGNORE_INDEX

    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
        full = model(**inputs)
    # the merged sequence ends with the same text tokens, so the last 6 labels sit at its end
    tail_logits = full.logits[0, -7:-1]
    expected = torch.nn.functional.cross_entropy(tail_logits, inputs["input_ids"][0, -6:])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_with_labels_the_logits_are_every_position_s_as_transformers_returns_them(model, processor):
    """transformers' contract: [batch, length, V] with or without labels; the loss is the supervised
    positions' mean cross-entropy, the same from full logits and from the memory-saving path."""
    inputs = batch_of_one(processor, picture(640, 480), chat(processor))
    labels = inputs["input_ids"].clone()
    labels[:, :-8] = IGNORE_INDEX

    with torch.no_grad():
        plain = model(**inputs)
        full = model(**inputs, labels=labels)
        last = model(**inputs, labels=labels, logits_to_keep=1)
        chosen = model(**inputs, logits_to_keep=torch.tensor([0, 5]))
    _, _, _, merged_labels = model.embed(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                         inputs["image_sizes"], labels)

    length = plain.attention_mask.shape[1]
    assert full.logits.shape == plain.logits.shape == (1, length, model.config.text_config.vocab_size)
    assert torch.equal(full.logits, plain.logits)
    supervised = merged_labels[:, 1:] != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(full.logits[:, :-1][supervised], merged_labels[:, 1:][supervised])
    assert full.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert last.logits.shape == (1, 1, full.logits.shape[-1]) and torch.equal(last.loss, full.loss)
    torch.testing.assert_close(last.logits[0, 0], full.logits[0, -1])
    torch.testing.assert_close(chosen.logits[0], full.logits[0, [0, 5]])


def test_the_forward_returns_tuples_hidden_states_and_takes_merged_embeddings(model, processor):
    inputs = batch_of_one(processor, picture(512, 512), chat(processor))
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
        as_tuple = model(**inputs, return_dict=False)
        embeddings, mask, _, _ = model.embed(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                             inputs["image_sizes"])
        from_embeddings = model(inputs_embeds=embeddings, attention_mask=mask)

    assert len(output.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert torch.equal(as_tuple[0], output.logits)
    torch.testing.assert_close(from_embeddings.logits, output.logits)


def test_merging_keeps_the_side_of_the_padding_and_pads_unpadded_batches_on_the_left():
    dim = 3
    image, pad = 9, 0
    embed = lambda ids: ids[..., None].float().expand(*ids.shape, dim).clone()  # noqa: E731
    features = [torch.full((2, dim), -1.0), torch.full((4, dim), -2.0)]

    ids = torch.tensor([[5, image, 6, pad], [7, 8, image, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    embeddings, merged_mask, positions, _ = merge_image_features(ids, embed(ids), mask, None, features, image)
    assert embeddings[:, :, 0].tolist() == [[5, -1, -1, 6, 0, 0, 0], [7, 8, -2, -2, -2, -2, 4]]
    assert merged_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert positions.tolist() == [[0, 1, 2, 3, 1, 1, 1], list(range(7))]

    ids = torch.tensor([[pad, 5, image, 6], [7, 8, image, 4]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    embeddings, merged_mask, positions, _ = merge_image_features(ids, embed(ids), mask, None, features, image)
    assert embeddings[:, :, 0].tolist() == [[0, 0, 0, 5, -1, -1, 6], [7, 8, -2, -2, -2, -2, 4]]
    assert positions.tolist() == [[1, 1, 1, 0, 1, 2, 3], list(range(7))]

    # equal lengths, no padding: the official model left-pads the merged sequences
    ids = torch.tensor([[5, image, 6], [7, image, 8]])
    labels = torch.tensor([[5, IGNORE_INDEX, 6], [7, IGNORE_INDEX, 8]])
    embeddings, merged_mask, _, merged_labels = merge_image_features(
        ids, embed(ids), torch.ones_like(ids), labels, features, image
    )
    assert embeddings[:, :, 0].tolist() == [[0, 0, 5, -1, -1, 6], [7, -2, -2, -2, -2, 8]]
    assert merged_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    assert merged_labels.tolist() == [[-100, -100, 5, -100, -100, 6], [7, -100, -100, -100, -100, 8]]


def test_a_single_right_padded_sample_is_merged_on_the_right():
    """The official merge treats any batch of one as left-padded and misplaces its tokens."""
    ids = torch.tensor([[5, 9, 6, 0, 0]])
    embeddings, mask, positions, _ = merge_image_features(
        ids, ids[..., None].float(), torch.tensor([[1, 1, 1, 0, 0]]), None, [torch.full((2, 1), -1.0)], 9
    )
    assert embeddings[0, :, 0].tolist() == [5, -1, -1, 6]
    assert positions.tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize(
    "ids, mask, images, message",
    [
        ([[5, 9, 6]], [[1, 1, 1]], 2, "holds 1"),
        ([[0, 5, 9, 0]], [[0, 1, 1, 0]], 1, "both sides"),
    ],
)
def test_inconsistent_images_and_masks_are_refused_with_the_reason(ids, mask, images, message):
    ids = torch.tensor(ids)
    with pytest.raises(ValueError, match=message):
        merge_image_features(ids, ids[..., None].float(), torch.tensor(mask), None, [torch.ones(2, 1)] * images, 9)


def test_unbatched_pixel_values_are_refused_with_what_to_do(model, processor):
    inputs = processor(texts=chat(processor), images=[picture(64, 64)])
    with pytest.raises(ValueError, match=r"pixel_values\[None\]"):
        model(**inputs)


def test_text_only_batches_skip_the_tower_and_stray_image_tokens_are_refused(model, processor):
    text = processor(texts="<|start_header_id|>user<|end_header_id|>\n\nhello")
    with torch.no_grad():
        assert model(**text).logits.shape[1] == text["input_ids"].shape[1]
    with pytest.raises(ValueError, match="1 <image> tokens but no images"):
        model(**processor(texts=chat(processor)))


def test_generate_with_the_kv_cache_equals_greedy_decoding_without_it(model, processor):
    inputs = batch_of_one(processor, picture(700, 400), chat(processor, answer=False))
    steps = 8

    generated = model.generate(**inputs, max_new_tokens=steps, do_sample=False, eos_token_id=None)

    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(steps):
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == ids.tolist()


def test_a_left_padded_batch_generates_what_each_sample_generates_alone(model, processor):
    prompts = [chat(processor, "open the drawer", answer=False), chat(processor, "wipe the table now please", answer=False)]
    images = [picture(512, 512, seed=3), picture(1000, 500, seed=4)]
    alone = [model.generate(**batch_of_one(processor, image, text), max_new_tokens=5, do_sample=False, eos_token_id=None)
             for image, text in zip(images, prompts)]

    texts = processor.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    singles = [processor(images=[image]) for image in images]
    crops = max(len(single["pixel_values"]) for single in singles)
    pixel_values = torch.stack(
        [torch.cat([s["pixel_values"], s["pixel_values"].new_zeros(crops - len(s["pixel_values"]), 3, 512, 512)]) for s in singles]
    )
    together = model.generate(
        input_ids=texts["input_ids"], attention_mask=texts["attention_mask"], pixel_values=pixel_values,
        image_sizes=torch.stack([s["image_sizes"] for s in singles]), max_new_tokens=5, do_sample=False, eos_token_id=None,
    )

    for row, single in zip(together, alone):
        assert row[-5:].tolist() == single[0, -5:].tolist()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model, processor):
    inputs = batch_of_one(processor, picture(640, 480), chat(processor))
    labels = inputs["input_ids"].clone()
    model.train()

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(0)  # the tower's drop path draws from the global RNG
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads()
    model.activation_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in model.vision_tower.clip_vision_model.trunk.stages)
    assert all(layer.gradient_checkpointing for layer in model.language_model.model.layers)
    checkpointed_loss, checkpointed = loss_and_grads()

    assert checkpointed_loss == plain_loss
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_weights_run_forward_and_backward_on_float32_pixels(tiny, processor):
    model = MagmaForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16)
    inputs = batch_of_one(processor, picture(640, 480), chat(processor))
    model.train()

    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()

    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
