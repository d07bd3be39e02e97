"""A small real tokenizer for tiny Magma models, built offline and deterministically.

Byte-level BPE in Llama-3's style (its pre-tokenizer regex, digits in groups of up to three, a
``<|begin_of_text|>`` prepended by the post-processor), trained on text made from Magma's own
templates, so prompts and answers tokenize into few ids. Llama-3's chat tokens and Magma's added
tokens come after the base vocabulary, as in Llama-3 (base 128000, special tokens above), so the
last ``ACTION_BINS`` base ids are ordinary tokens that actions can take over (docs/magma-text.md §Action tokens).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from magma_data.magma_text import (
    ACTION_BINS,
    BEGIN_OF_TEXT,
    END_OF_TURN,
    IMAGE_TOKEN,
    LLAMA3_CHAT_TEMPLATE,
    LLAMA3_SPECIAL_TOKENS,
    MAGMA_ADDED_TOKENS,
    PAD_TOKEN,
    SYSTEM_PROMPT,
    action_turn,
    semantic_turn,
    som_turn,
    tom_turn,
)

#: Base vocabulary of the tiny tokenizer (Llama-3: 128000).
TINY_BASE_VOCAB = 768
#: Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3-8B-Instruct).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_VERBS = (
    "pick up", "put down", "open", "close", "wipe", "move", "cut", "pour", "fold", "push", "pull",
    "turn on", "turn off", "place", "wash", "stir", "lift", "drop", "grab", "slide", "rotate", "hang",
)
_OBJECTS = (
    "red cup", "drawer", "spoon", "bowl", "table", "fridge door", "pan", "onion", "glass", "towel",
    "blue block", "tap", "lid", "pot", "knife", "plate", "bottle", "sponge", "cabinet", "green apple",
    "yellow banana", "cutting board", "kettle", "microwave", "chair", "box", "paper", "phone",
)
_PLACES = (
    "on the counter", "into the sink", "to the left", "to the right", "next to the stove",
    "onto the shelf", "in the basket", "under the table", "behind the bottle", "near the window",
)


def training_text(seed: int = 0) -> list[str]:
    """Magma conversations with seeded marks and traces: the tiny tokenizer's corpus."""
    rng = random.Random(seed)
    lines = [SYSTEM_PROMPT]
    for index in range(600):
        task = f"{rng.choice(_VERBS)} the {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}"
        ids = np.array(sorted(rng.sample(range(1, 40), 4)))
        targets = [
            np.array([[rng.randrange(256), rng.randrange(256)] for _ in range(rng.randrange(2, 8))])
            for _ in range(2)
        ]
        turns = (
            semantic_turn(task)
            + tom_turn("robot" if index % 2 else "video", task, ids, ids[:2], targets)
            + som_turn(ids, np.array([[rng.randrange(256), rng.randrange(256)] for _ in ids]))
            + action_turn(task)
        )
        lines += [turn["value"] for turn in turns]
    return lines


def build_tiny_tokenizer(
    base_vocab: int = TINY_BASE_VOCAB, magma_tokens: bool | tuple[str, ...] = True
) -> PreTrainedTokenizerFast:
    """The same tokenizer on every call: BPE training on a fixed corpus is deterministic.

    ``magma_tokens=False`` leaves out Magma's ``<image>``, ``<pad>`` and ``<action>``: a stand-in
    for Llama-3-Instruct's own tokenizer, the one Magma's pretraining starts from; a tuple keeps
    those named (``("<image>", "<pad>")``: Magma-8B's tokenizer, which has no ``<action>``).
    """
    kept = MAGMA_ADDED_TOKENS if magma_tokens is True else tuple(magma_tokens or ())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    if tokenizer.get_vocab_size() != base_vocab:
        raise RuntimeError(
            f"the tokenizer corpus yields only {tokenizer.get_vocab_size()} base tokens, {base_vocab} wanted; "
            "add text to training_text()"
        )
    special = [*LLAMA3_SPECIAL_TOKENS, *(token for token in MAGMA_ADDED_TOKENS if token in kept)]
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN_OF_TEXT} $A",
        pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT} $B",
        special_tokens=[(BEGIN_OF_TEXT, tokenizer.token_to_id(BEGIN_OF_TEXT))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN if PAD_TOKEN in kept else None,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="right",
    )
    assert wrapped.vocab_size == base_vocab >= 2 * ACTION_BINS
    return wrapped


def missing_magma_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Magma's added tokens the tokenizer lacks, in train.py's order (``<pad>`` only when it has no pad)."""
    vocabulary = tokenizer.get_vocab()
    return [
        token for token in MAGMA_ADDED_TOKENS
        if (tokenizer.pad_token is None if token == PAD_TOKEN else token not in vocabulary)
    ]


def add_magma_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add the tokens Magma's train.py adds that the tokenizer lacks; returns them.

    Each as train.py's ``smart_tokenizer_and_embedding_resize`` adds it, one call per token: the
    embeddings (input and output) are resized to the tokenizer's length and the new row is the
    mean of the rows before it. The model's config follows: vocabulary sizes (the text config's,
    and the top-level copy Magma's own config keeps), ``image_token_index``, the pad id.
    """
    added = missing_magma_tokens(tokenizer)
    for token in added:
        if token == PAD_TOKEN:
            count = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        else:
            count = tokenizer.add_tokens([token], special_tokens=True)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
                matrix[-count:] = matrix[:-count].mean(dim=0, keepdim=True)
    config = model.config
    if added:
        if "vocab_size" in vars(config):  # Magma's config copies the text config's fields to the top
            config.vocab_size = len(tokenizer)
        config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        config.text_config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return added


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save so that Magma's own code (transformers 4.4x) reads it too.

    transformers 5 writes the chat template to ``chat_template.jinja`` and names its class
    ``TokenizersBackend``; 4.4x reads neither. The template goes into ``tokenizer_config.json`` and
    the class is named ``PreTrainedTokenizerFast``, as in Llama-3's and Magma-8B's folders.
    """
    tokenizer.save_pretrained(str(folder), save_jinja_files=False)
    config_path = folder / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
