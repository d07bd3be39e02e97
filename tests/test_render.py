import copy
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from magma_data.stages.base import StageError
from magma_data.stages.render import RenderConfig, RenderStage, mark_font
from stage_contract import assert_stage_contract

WIDTH, HEIGHT, FRAMES = 512, 256, 8  # grid x = pixel x / 2, grid y = pixel y


def hand_built_row(task="open the drawer"):
    """Four marks: 1 and 3 static, 2 and 4 moving (2 to the right, 4 down with a stall and a lost frame)."""
    t = np.arange(FRAMES, dtype=np.float64)
    tracks = np.empty((FRAMES, 4, 2))
    tracks[:, 0] = [20, 20]
    tracks[:, 1, 0], tracks[:, 1, 1] = 101.4 + 8 * t, 50  # grid x 50.7 + 4t: rounds up, unlike int()
    tracks[:, 2] = [500, 250]
    tracks[:, 3, 0] = 300
    tracks[:, 3, 1] = [100, 103, 104, 107, 110, 180, 116, 119.4]  # 104 is thinned; 180 is invisible
    visibility = np.ones((FRAMES, 4), bool)
    visibility[5, 3] = False
    rng = np.random.default_rng(0)
    return {
        "sample_id": "hand-built",
        "source": "ego4d",
        "task": task,
        "tracks": tracks.astype(np.float32),
        "visibility": visibility,
        "marked_frame": rng.integers(90, 160, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        "image_width": WIDTH,
        "image_height": HEIGHT,
        "camera_motion": False,
        "homography_ok": np.zeros(FRAMES, bool),
        "mark_ids": np.array([1, 2, 3, 4], np.int32),
        "mark_xy": tracks[0].astype(np.float32),
        "mark_positive": np.array([False, True, False, True]),
        "mark_track_index": np.array([0, 1, 2, 3], np.int32),
    }


SEMANTIC_TURN = [
    {"from": "human", "value": "<image>\n\nWhat is the person doing in the image?\n"},
    {"from": "gpt", "value": "open the drawer\n"},
]

TOM_ANSWER = (
    'Mark 2 at [51,50], Mark 4 at [150,100] should be moved, and their future positions are:\n\n'
    '"Mark 2": "[[55,50],[59,50],[63,50],[67,50],[71,50],[75,50],[79,50]]"\n\n'
    '"Mark 4": "[[150,103],[150,107],[150,110],[150,116],[150,119]]"\n\n'
)

SOM_TURN = [
    {
        "from": "human",
        "value": "<image>\n\nThe image is split into 256x256 grids, and labeled with numeric marks.\n"
        "Please locate all the numerical marks in the image.\n",
    },
    {"from": "gpt", "value": "Mark 1 at [10,20]. Mark 2 at [51,50]. Mark 3 at [250,250]. Mark 4 at [150,100]\n"},
]


def test_tom_conversation_matches_the_hand_written_golden():
    out = RenderStage()(hand_built_row())

    assert out["conversations"] == SEMANTIC_TURN + [
        {
            "from": "human",
            "value": "<image>\n\nThe image is split into 256x256 grids, and labeled with numeric marks "
            "[1, 2, 3, 4].\nThe person is doing: open the drawer. To finish the task, how to move the "
            "numerical marks in the image for the next 7 steps?\n",
        },
        {"from": "gpt", "value": TOM_ANSWER},
    ]
    assert out["tom_mark_ids"].tolist() == [2, 4] and out["tom_mark_ids"].dtype == np.int32
    assert out["tom_steps"] == 7
    assert out["tom_targets"] == [
        [[51, 50], [55, 50], [59, 50], [63, 50], [67, 50], [71, 50], [75, 50], [79, 50]],
        [[150, 100], [150, 103], [150, 107], [150, 110], [150, 116], [150, 119]],
    ]


def test_fewer_than_two_moving_marks_fall_back_to_the_som_only_golden():
    row = hand_built_row()
    row["mark_positive"] = np.array([False, True, False, False])
    out = RenderStage()(row)

    assert out["conversations"] == SEMANTIC_TURN + SOM_TURN
    assert len(out["tom_mark_ids"]) == 0 and out["tom_targets"] == [] and out["tom_steps"] == 0


def test_no_surviving_tom_mark_falls_back_to_som_only():
    out = RenderStage(RenderConfig(speed_threshold=10.0))(hand_built_row())
    assert out["conversations"] == SEMANTIC_TURN + SOM_TURN


def test_marks_with_too_few_points_or_too_slow_are_left_out_of_the_tom_turn():
    row = hand_built_row()
    row["visibility"][3:, 3] = False  # mark 4 keeps 2 points, not more than T // 4 = 2
    assert RenderStage()(row)["tom_mark_ids"].tolist() == [2]

    slow = RenderStage(RenderConfig(speed_threshold=3.9))(hand_built_row())  # mark 4: 3.88 per point
    assert slow["tom_mark_ids"].tolist() == [2] and slow["tom_steps"] == 7


def test_robot_style_uses_the_robot_template_with_the_colon_and_no_semantic_turn():
    out = RenderStage(RenderConfig(style="robot"))(hand_built_row(task="pick up the can"))

    assert out["conversations"] == [
        {
            "from": "human",
            "value": "<image>\n\nThe image is split into 256x256 grids, and labeled with numeric marks: "
            "[1, 2, 3, 4].\nThe robot is doing: pick up the can. To finish the task, how to move the "
            "numerical marks in the image for the next 7 steps?\n",
        },
        {"from": "gpt", "value": TOM_ANSWER},
    ]


def test_an_empty_task_drops_the_semantic_turn_and_the_task_sentence():
    out = RenderStage()(hand_built_row(task=""))

    assert out["conversations"] == [
        {
            "from": "human",
            "value": "<image>\n\nThe image is split into 256x256 grids, and labeled with numeric marks "
            "[1, 2, 3, 4].\nTo finish the task, how to move the numerical marks in the image for the "
            "next 7 steps?\n",
        },
        {"from": "gpt", "value": TOM_ANSWER},
    ]


def test_points_past_the_right_edge_are_dropped_from_the_targets():
    row = hand_built_row()
    row["tracks"][:, 1, 0] = 440 + 16 * np.arange(FRAMES)  # grid x 220, 228, ..., 276: off the grid from 256
    row["visibility"][:, 1] = True  # the tracker still claims to see it
    out = RenderStage()(row)

    assert out["tom_targets"][0] == [[220, 50], [228, 50], [236, 50], [244, 50], [252, 50]]


def test_frames_the_camera_could_not_align_are_left_out_of_the_targets():
    row = hand_built_row()
    row["camera_motion"] = True
    row["homography_ok"] = np.arange(FRAMES) != 3
    out = RenderStage()(row)

    assert [63, 50] not in out["tom_targets"][0]
    assert [150, 107] not in out["tom_targets"][1]


def test_the_input_row_is_not_modified():
    row = hand_built_row()
    before = copy.deepcopy(row)
    RenderStage()(row)
    for key, value in before.items():
        np.testing.assert_array_equal(row[key], value)


def test_som_image_has_red_discs_at_the_marks_and_image_is_the_plain_frame():
    row = hand_built_row()
    out = RenderStage()(row)
    marked = np.asarray(Image.open(io.BytesIO(out["som_image"])).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(out["image"])).convert("RGB")).astype(int)

    def red_share(image, x, y, radius=4):
        patch = image[int(y) - radius : int(y) + radius + 1, int(x) - radius : int(x) + radius + 1]
        red = (patch[..., 0] > 180) & (patch[..., 1] < 90) & (patch[..., 2] < 90)
        return (patch[..., 0] > 180).mean(), red.mean()  # red disc, white or pink-edged digits

    for x, y in row["mark_xy"]:
        covered, red = red_share(marked, x, y)
        assert covered > 0.95 and red > 0.3, (x, y)
        assert red_share(plain, x, y)[1] == 0
    assert red_share(marked, 400, 150)[1] == 0  # no mark there


def test_mark_font_is_the_smallest_whose_55_reaches_3_percent_of_the_width():
    def right_bottom(font):
        return ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "55", font=font)[2:]

    for width in (512, 683, 910):
        font = mark_font(width)
        assert min(right_bottom(font)) >= 0.03 * width
        assert min(right_bottom(ImageFont.load_default(size=font.size - 1))) < 0.03 * width


def test_zero_marks_keep_the_semantic_turn_and_fail_without_a_task():
    row = hand_built_row()
    for key in ("mark_ids", "mark_track_index"):
        row[key] = np.zeros(0, np.int32)
    row["mark_xy"], row["mark_positive"] = np.zeros((0, 2), np.float32), np.zeros(0, bool)
    assert RenderStage()(row)["conversations"] == SEMANTIC_TURN

    row["task"] = ""
    with pytest.raises(StageError, match="no marks and no task"):
        RenderStage()(row)


def test_output_and_placeholders_match_the_declared_columns():
    stage = RenderStage()
    assert_stage_contract(stage, stage(hand_built_row()))


def test_rendering_is_byte_identical_across_runs():
    first, second = RenderStage()(hand_built_row()), RenderStage()(hand_built_row())
    assert first["som_image"] == second["som_image"] and first["conversations"] == second["conversations"]


def test_the_tom_future_starts_at_the_marked_frame():
    """With ``frame_pos`` 2 the targets are the traces from frame 2 on, each starting at its mark there."""
    row = hand_built_row()
    row["mark_xy"] = row["tracks"][2]
    out = RenderStage()({**row, "frame_pos": np.int32(2)})
    assert out["tom_mark_ids"].tolist() == [2, 4]
    assert out["tom_targets"][0] == [[59, 50], [63, 50], [67, 50], [71, 50], [75, 50], [79, 50]]
    assert out["tom_targets"][1] == [[150, 104], [150, 107], [150, 110], [150, 116], [150, 119]]
    assert out["tom_steps"] == 5
    question = out["conversations"][2]["value"]
    assert "for the next 5 steps" in question
