"""Shard rows -> Magma's samples and batches (samples.py, data.py), the split (readers.py), re-drawn marks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import picture, tiny_magma, tom_shards

from magma_data.magma_text import IGNORE_INDEX, SYSTEM_PROMPT, asks_about_marks, parse_answer
from magma_data.stages.action_tokens import ActionConfig, action_token_ids
from magma_data.train import MagmaProcessor
from magma_data.train.data import Collator, ReadRow, TrainingSamples
from magma_data.train.readers import DataSpec, LlavaJson, MagmaShards, Reader, SplitRule, open_data, split_rows
from magma_data.train.samples import BadRow, SampleMaker, Skipped, answer_spans, chat_headers

GOLDEN = Path(__file__).parent / "fixtures" / "magma_preprocess_golden.json"


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> MagmaProcessor:
    return MagmaProcessor.from_pretrained(tiny_magma(tmp_path_factory))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Reader]:
    return open_data([DataSpec(tom_shards(tmp_path_factory))])


def _rows(reader: Reader, split: str = "all", fraction: float = 0.0, columns=None) -> list[dict]:
    return list(split_rows(reader, SplitRule(split, fraction), columns=columns))


def _jpeg(width: int, height: int, seed: int) -> dict:
    buffer = io.BytesIO()
    picture(width, height, seed).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


#: A magma-data reader without files: what SampleMaker asks of a row's reader (its layout's branch)
ROWS = MagmaShards("rows", [])


def test_rows_become_the_samples_magmas_own_preprocess_makes(processor):
    """Golden cases: Magma's LazySupervisedDataset.__getitem__ @ e373780 on a video ToM row and a robot row
    (benchmarks/magma_data_parity.py --golden, run in the official venv on rows of a sample-source run)."""
    maker = SampleMaker(processor)
    for case in json.loads(GOLDEN.read_text()):
        row = {"conversations": case["conversations"], "image": _jpeg(192, 128, 1), "som_image": _jpeg(192, 128, 2),
               "action_normalized": case["action_normalized"]}
        sample = maker(row, ROWS)
        assert sample.input_ids.tolist() == case["input_ids"], case["name"]
        assert sample.labels.tolist() == case["labels"], case["name"]
        assert sample.image_sizes.tolist() == case["image_sizes"]
        assert sample.pixel_values.shape == (len(case["image_sizes"]), 3, 512, 512)  # 1 crop per video/robot image


def test_labels_cover_each_answer_and_its_end_of_turn_only(processor):
    maker = SampleMaker(processor)
    turns = [{"from": "human", "value": "<image>\n\nWhat is the person doing in the image?\n"},
             {"from": "gpt", "value": "open the drawer\n"}]
    ids, labels = maker.tokens(turns)
    supervised = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert supervised == "open the drawer<|eot_id|>"
    assert ids[:2].tolist() == [processor.tokenizer.bos_token_id] * 2  # Magma's double BOS
    user, assistant = chat_headers(processor.tokenizer)
    assert (user, assistant) == ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert len(answer_spans(maker.render(turns + turns), user, assistant)) == 2


def test_the_som_question_shows_the_marked_image_and_the_other_turns_the_raw_frame(processor, shards):
    row = _rows(shards[0])[0]
    turns, images, crops = SampleMaker(processor).magma_content(row)
    questions = [turn["value"] for turn in turns if turn["from"] == "human"]
    assert crops == 1 and len(images) == len(questions) == 2
    assert not asks_about_marks(questions[0]) and asks_about_marks(questions[1])
    from PIL import Image

    assert np.array_equal(np.asarray(images[0]), np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")))
    assert np.array_equal(np.asarray(images[1]), np.asarray(Image.open(io.BytesIO(row["som_image"]["bytes"])).convert("RGB")))


def test_robot_actions_are_retokenised_with_the_tokenizers_own_base_vocabulary(processor):
    """The tiny tokenizer's base vocabulary is 768, not Llama-3's 128000: actions take its last 256 ids."""
    normalized = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 0.999, 1.0], np.float32)
    turns = [{"from": "human", "value": "<image>\n\nWhat action should the robot take to open the drawer?"},
             {"from": "gpt", "value": "<action>" * 7}]
    row = {"conversations": turns, "image": _jpeg(64, 64, 0), "som_image": _jpeg(64, 64, 1), "action_normalized": normalized}
    sample = SampleMaker(processor)(row, ROWS)

    expected = action_token_ids(normalized, ActionConfig(vocab_size=processor.tokenizer.vocab_size)).tolist()
    assert processor.tokenizer.vocab_size == 768 and all(768 - 256 <= i < 768 for i in expected)
    supervised = sample.labels[sample.labels != IGNORE_INDEX].tolist()
    assert supervised == expected + [processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    assert sample.input_ids[sample.labels != IGNORE_INDEX].tolist()[:7] == expected
    # with Llama-3's base vocabulary the same rule gives the ids magma-data stored
    llama3_ids = action_token_ids(normalized, ActionConfig(vocab_size=128000)).tolist()
    assert llama3_ids == [127999, 127936, 127872, 127840, 127808, 127745, 127744]
    # a LLaVA export carries only the stored ids: used when they are this tokenizer's, else the row is refused
    exported = {key: value for key, value in row.items() if key != "action_normalized"}
    assert SampleMaker(processor)(dict(exported, action_token_ids=expected), ROWS).labels.tolist() == sample.labels.tolist()
    with pytest.raises(BadRow, match="do not fit this tokenizer"):
        SampleMaker(processor)(dict(exported, action_token_ids=llama3_ids), ROWS)


def test_collator_pads_like_magmas(processor):
    maker = SampleMaker(processor)
    rows = [{"conversations": [{"from": "human", "value": "<image>\n\nWhat is in this image?"}, {"from": "gpt", "value": answer}],
             "image": _jpeg(64, 64, 0), "som_image": _jpeg(64, 64, 0)} for answer in ("A cup.", "A cup on a table, by the window.")]
    samples = [maker(row, ROWS) for row in rows]
    batch = Collator(processor.tokenizer.pad_token_id, max_length=1000)(samples + [Skipped("rows", "image does not decode", "x")])
    short, long = (len(s.input_ids) for s in samples)
    inputs = batch.inputs
    assert inputs["input_ids"].shape == (2, long) and inputs["attention_mask"].dtype == torch.bool
    assert inputs["input_ids"][0, short:].eq(processor.tokenizer.pad_token_id).all()
    assert inputs["labels"][0, short:].eq(IGNORE_INDEX).all() and not inputs["attention_mask"][0, short:].any()
    assert inputs["pixel_values"].shape == (2, 1, 3, 512, 512) and inputs["image_sizes"].tolist() == [[[1, 1]], [[1, 1]]]
    assert [item.reason for item in batch.skipped] == ["image does not decode"] and batch.sources == ["rows", "rows"]
    assert Collator(processor.tokenizer.pad_token_id, max_length=short)(samples).inputs["input_ids"].shape == (2, short)


def test_validation_holds_out_whole_videos_the_same_way_every_time(shards):
    source = shards[0]
    columns = ["sample_id", "video_uid"]
    every = _rows(source, columns=columns)
    train, validation = _rows(source, "train", 0.5, columns), _rows(source, "validation", 0.5, columns)
    assert sorted(row["sample_id"] for row in train + validation) == sorted(row["sample_id"] for row in every)
    assert len(validation) and len(train)
    assert not {row["video_uid"] for row in train} & {row["video_uid"] for row in validation}
    assert _rows(source, "validation", 0.5, columns) == validation
    assert _rows(source, "validation", 0.0) == [] and len(_rows(source, "all", 0.5)) == len(every)


def test_data_entries_take_a_weight_after_the_last_colon():
    assert DataSpec.parse("out/oxe:0.3") == DataSpec(Path("out/oxe"), 0.3)
    assert DataSpec.parse("C:data/x") == DataSpec(Path("C:data/x"))
    with pytest.raises(ValueError, match="positive"):
        DataSpec.parse("out/oxe:0")


def test_bad_rows_become_skipped_with_their_reason(processor):
    good = {"conversations": [{"from": "human", "value": "<image>\n\nWhat is in this image?"}, {"from": "gpt", "value": "A cup."}],
            "image": _jpeg(64, 64, 0), "som_image": _jpeg(64, 64, 0)}
    broken = dict(good, image={"bytes": good["image"]["bytes"][:200], "path": None})
    long = dict(good, conversations=[{"from": "human", "value": "word " * 300 + "<image>\n"}, {"from": "gpt", "value": "A cup."}])
    unanswered = dict(good, conversations=good["conversations"][:1] + good["conversations"])
    padded = dict(good, conversations=[good["conversations"][0], {"from": "gpt", "value": "A <pad> cup."}])
    malformed = dict(good, conversations=[{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": None}])
    six_dimensions = dict(good, conversations=[{"from": "human", "value": "<image>\nWhat action?"},
                                               {"from": "gpt", "value": "<action>" * 7}], action_normalized=[0.0] * 6)
    rows = [good, broken, long, unanswered, padded, malformed, six_dimensions]
    samples = TrainingSamples([ROWS], SampleMaker(processor, max_length=200), seed=0)
    results = [samples[ReadRow(0, 0, row)] for row in rows]
    assert not isinstance(results[0], Skipped)
    assert [results[i].reason for i in range(1, len(rows))] == [
        "image does not decode", "text does not fit", "turns are not question-answer pairs", "text holds the pad token",
        "turns are malformed", "no action"]


def test_llava_json_rows_follow_magmas_image_branch(processor, tmp_path):
    picture(64, 48).save(tmp_path / "a.png")
    rows = [
        {"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "Noise."}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]},
        {"id": "3", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "?"}]},
    ]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    (source,) = open_data([DataSpec.parse(f"{tmp_path / 'chat.json'}:2")])
    assert (type(source), source.name, source.weight) == (LlavaJson, "chat", 2.0)
    maker = SampleMaker(processor)
    read = _rows(source)
    assert read == rows and source.units(0, 0) == source.shard_units(0) == ["a.png", "2", "missing.png"]  # held out whole

    with_image = maker(read[0], source)
    text = processor.tokenizer.decode(with_image.input_ids)
    assert "<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>" in text  # <image> moved to the turn's start
    assert with_image.image_sizes.tolist() == [[1, 1]]  # 64x48 fits one 512 crop of at most 4
    text_only = maker(read[1], source)
    assert "<image>\nSay hi." in processor.tokenizer.decode(text_only.input_ids) and text_only.pixel_values.abs().sum() > 0
    two_tokens = dict(read[0], conversations=[{"from": "human", "value": "<image>\nA\n<image>"}, {"from": "gpt", "value": "B"}])
    with pytest.raises(BadRow, match="images do not match"):
        maker(two_tokens, source)
    samples = TrainingSamples([source], maker, seed=0)
    skipped = [item for item in (samples[ReadRow(0, 0, row)] for row in read) if isinstance(item, Skipped)]
    assert [(item.reason, item.detail.split(":")[0]) for item in skipped] == [("image does not decode", "3")]


def test_a_llava_file_that_is_not_a_list_of_rows_is_refused(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"id": "1"}))
    with pytest.raises(ValueError, match="a list of objects"):
        open_data([DataSpec(tmp_path / "one.json")])
    (tmp_path / "plain.jsonl").write_text(json.dumps({"id": "1", "text": "hello"}) + "\n")
    with pytest.raises(ValueError, match="need 'conversations'.*found \\['id', 'text'\\]"):
        open_data([DataSpec(tmp_path / "plain.jsonl")])


def test_redrawn_marks_change_between_epochs_and_repeat_in_every_run(processor, shards):
    rows = _rows(shards[0])  # every column: the stages that draw marks read the traces

    def answers(seed: int, epoch: int) -> dict[int, str]:
        samples = TrainingSamples(shards, SampleMaker(processor), seed=seed, redraw=True)
        found = {}
        for index, row in enumerate(rows):
            sample = samples[ReadRow(0, epoch, row)]
            found[index] = processor.tokenizer.decode(sample.labels[sample.labels != IGNORE_INDEX])
        return found

    stored = {index: row["conversations"][-1]["value"].strip() for index, row in enumerate(rows)}
    first, again, second = answers(0, 0), answers(0, 0), answers(0, 1)
    assert first == again
    assert first != second
    changed = [index for index in stored if parse_answer(first[index]).marks != parse_answer(second[index]).marks]
    assert len(changed) >= len(stored) // 2
    assert any(stored[index] not in first[index] for index in stored)  # not the frozen draw either
    assert all(SYSTEM_PROMPT not in answer for answer in first.values())


def _video_turns(task: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\n\nWhat is the person doing in the image?\n"},
            {"from": "gpt", "value": f"{task}\n"},
            {"from": "human", "value": "<image>\n\nThe image is split into 256x256 grids, and labeled with numeric "
                                       "marks.\nPlease locate all the numerical marks in the image.\n"},
            {"from": "gpt", "value": "Mark 1 at [10,20]\n"}]


def test_a_seeded_epoch_leaves_the_som_tom_turn_out_of_a_fifth_of_the_video_samples(processor):
    """Magma's ``random.random() < 0.2`` (data/conversations.py ~L231), drawn per (seed, epoch, sample)."""
    count = 5000
    sample_ids = [f"video-{index:05d}" for index in range(count)]
    maker = SampleMaker(processor, som_tom_drop=0.2, seed=7)

    def dropped(epoch: int, made=maker) -> set[str]:
        return {sample_id for sample_id in sample_ids if made.drops_marks_turn(_video_turns("cut"), sample_id, epoch)}

    first = dropped(0)
    assert 0.18 <= len(first) / count <= 0.22
    assert dropped(0) == first  # every run drops the same samples
    second = dropped(1)
    assert 0.18 <= len(second) / count <= 0.22 and len(first & second) < 0.3 * len(first)  # each epoch others
    assert dropped(0, SampleMaker(processor, som_tom_drop=0.2, seed=8)) != first  # another seed, others
    assert not dropped(0, SampleMaker(processor))  # evaluation (and a drop of 0) keeps every turn
    robot = [{"from": "human", "value": "<image>\n\nWhat action should the robot take to pick?"},
             {"from": "gpt", "value": "<action>" * 7}, *_video_turns("pick")[2:]]
    always = SampleMaker(processor, som_tom_drop=1.0)
    assert always.drops_marks_turn(_video_turns("cut"), "s", 0)
    assert not always.drops_marks_turn(robot, "s", 0)  # Magma's robot loader never drops it
    assert not always.drops_marks_turn(_video_turns("cut")[2:], "s", 0)  # no semantic turn: the only turn stays


def test_a_dropped_sample_is_the_semantic_turn_with_its_one_image(processor, shards):
    kept = TrainingSamples(shards, SampleMaker(processor, som_tom_drop=0.0), seed=0)
    dropped = TrainingSamples(shards, SampleMaker(processor, som_tom_drop=1.0), seed=0)
    for row in _rows(shards[0]):
        whole, short = kept[ReadRow(0, 0, row)], dropped[ReadRow(0, 0, row)]
        assert whole.pixel_values.shape[0] == 2 and short.pixel_values.shape[0] == 1
        answer = processor.tokenizer.decode(short.labels[short.labels != IGNORE_INDEX])
        assert answer == row["conversations"][1]["value"].strip() + "<|eot_id|>"
