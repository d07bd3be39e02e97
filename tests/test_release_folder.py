"""``--root`` may be the folder the user gave the official downloader: the release inside it is found and named."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from source_fixtures import ego4d_miniature, epic_miniature, ssv2_miniature

from magma_data.cli import main
from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip
from magma_data.sources.metadata import MetadataNotFound


def test_ego4d_is_read_from_the_v2_folder_the_ego4d_cli_made(tmp_path):
    downloads = tmp_path / "ego4d_data"  # ego4d --output_directory ~/ego4d_data ... leaves ~/ego4d_data/v2/...
    release = ego4d_miniature(downloads / "v2")
    notes = []
    source = open_source(load_manifest("ego4d"), downloads, notify=notes.append)
    assert source.root == release.resolve()
    assert notes == [f"ego4d: reading the release in {release} (inside --root {downloads})"]


def test_a_release_given_as_root_is_read_as_it_is(tmp_path):
    release = ego4d_miniature(tmp_path / "v2")
    notes = []
    assert open_source(load_manifest("ego4d"), release, notify=notes.append).root == release.resolve()
    assert notes == []


def test_two_releases_inside_root_are_refused_with_their_names(tmp_path):
    ego4d_miniature(tmp_path / "v1")
    ego4d_miniature(tmp_path / "v2")
    with pytest.raises(ValueError, match=r"holds 2 ego4d releases \(v1, v2\); pass the one to read as --root"):
        open_source(load_manifest("ego4d"), tmp_path)


def test_no_release_anywhere_says_which_file_is_missing(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    with pytest.raises(MetadataNotFound, match=r"ego4d.json not found.*nor does any folder up to 2 levels inside"):
        open_source(load_manifest("ego4d"), tmp_path)


def test_epic_kitchens_is_found_in_the_folder_that_holds_the_downloader_output(tmp_path):
    release = epic_miniature(tmp_path / "datasets" / "epic")  # EPIC-KITCHENS/ beside the annotations clone
    source = open_source(load_manifest("epic_kitchens"), tmp_path)
    assert source.root == release.resolve()
    assert any(clip.clip_id == "P01_01_0" for clip in source.clips() if isinstance(clip, Clip))


def test_ssv2_is_read_as_qualcomms_package_unpacks_it_one_folder_down(tmp_path):
    release = ssv2_miniature(tmp_path / "something-something-v2")
    labels = release / "labels"
    labels.mkdir()
    for name in ("labels", "train", "validation"):  # 20BN's something-something-v2-<name>.json
        shutil.move(release / f"something-something-v2-{name}.json", labels / f"{name}.json")
    notes = []
    source = open_source(load_manifest("ssv2"), tmp_path, notify=notes.append)
    assert source.root == release.resolve() and source.labels_path == (labels / "labels.json").resolve()
    assert {"1001", "1002"} <= {clip.clip_id for clip in source.clips() if isinstance(clip, Clip)}
    assert notes == [f"ssv2: reading the release in {release} (inside --root {tmp_path})"]


def test_check_says_which_folder_it_read(tmp_path):
    ego4d_miniature(tmp_path / "ego4d_data" / "v2")
    result = CliRunner().invoke(main, ["check", "--input", "ego4d", "--root", str(tmp_path / "ego4d_data")])
    assert result.exit_code == 0, result.output
    assert f"reading the release in {tmp_path / 'ego4d_data' / 'v2'}" in result.stderr
