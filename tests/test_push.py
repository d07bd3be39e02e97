"""``magma-data push`` on real output folders: what is sent, the card, refusals. The Hub is not reachable
here, so the upload itself is seen only as the one call it is."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli_runs import uninterrupted_run, unfinished_run
from magma_data.card import MAGMA_CITATION
from magma_data.config import RunConfig
from magma_data.cli import main
from magma_data.outputs import UnfinishedOutput
from magma_data.push import push, selection
from magma_data.stages.track import TRACKERS


@pytest.fixture
def finished(tmp_path_factory, tmp_path):
    """A copy of a finished run's output folder (push rewrites its card)."""
    copy = tmp_path / "out"
    shutil.copytree(uninterrupted_run(tmp_path_factory), copy)
    return copy


def test_dry_run_lists_every_file_but_the_ledgers(finished):
    result = CliRunner().invoke(main, ["push", str(finished), "--repo-id", "someone/windows", "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[-1] for line in result.stdout.splitlines()]
    everything = sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*") if p.is_file())
    assert listed == [name for name in everything if not name.startswith(".magma/")]
    assert "README.md" in listed and "summary.json" in listed
    assert sum(name.startswith("data/sample/train-") for name in listed) == 4
    assert sum(name.startswith(".magma/") for name in everything) >= 2  # ledger and config stay home
    assert "would send 6 files" in result.stderr and "datasets/someone/windows" in result.stderr


def test_the_card_has_configs_counts_config_tracker_licence_and_citations(finished):
    push(finished, "someone/windows", dry_run=True, license="cc-by-nc-4.0")
    card = (finished / "README.md").read_text()
    from huggingface_hub import DatasetCard

    data = DatasetCard(card).data.to_dict()
    assert data["license"] == "cc-by-nc-4.0"
    assert [c["config_name"] for c in data["configs"]] == ["default", "sample"]
    config = json.loads((finished / ".magma" / "sample" / "config.json").read_text())
    row = next(line for line in card.splitlines() if line.startswith("| `sample`"))
    assert row.startswith("| `sample` | 8 | 0 | 0 | video_tom | lk | - |")
    assert json.dumps(RunConfig.from_dict(config).hashed(), indent=2, sort_keys=True) in card
    assert config["root"] and config["root"] not in card  # where the input lay is no one else's business
    assert MAGMA_CITATION in card and TRACKERS["lk"].citation in card
    assert "## Columns (video_tom)" in card and "`tom_targets`" in card
    push(finished, "someone/windows", dry_run=True)  # no --license: the card keeps the one it has
    assert DatasetCard((finished / "README.md").read_text()).data.to_dict()["license"] == "cc-by-nc-4.0"


def test_the_refreshed_card_still_loads_each_source_as_a_config(finished):
    import datasets

    push(finished, "someone/windows", dry_run=True)
    assert len(datasets.load_dataset(str(finished), "sample", split="train")) == 8


def test_an_unfinished_folder_is_refused(tmp_path_factory):
    unfinished = unfinished_run(tmp_path_factory)
    card = (unfinished / "README.md").read_bytes() if (unfinished / "README.md").exists() else None
    result = CliRunner().invoke(main, ["push", str(unfinished), "--repo-id", "someone/windows", "--dry-run"])
    assert result.exit_code == 1 and "1 of 4 shards committed" in result.output
    assert ((unfinished / "README.md").read_bytes() if card is not None else None) == card  # untouched


def test_a_stray_half_written_file_is_refused(finished):
    (finished / "errors").mkdir(exist_ok=True)
    (finished / "errors" / ".sample-00001-of-00004.parquet.partial").write_bytes(b"")
    with pytest.raises(UnfinishedOutput, match="half-written"):
        push(finished, "someone/windows", dry_run=True)


def test_the_upload_is_one_call_that_sends_what_the_dry_run_lists(finished, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: calls.append(("create_repo", a, k)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **k: calls.append(("upload_folder", (), k)))
    plan = push(finished, "someone/windows", private=True)
    assert [name for name, _, _ in calls] == ["create_repo", "upload_folder"]
    assert calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    upload = calls[1][2]
    assert upload["folder_path"] == str(finished) and upload["repo_type"] == "dataset"
    files = sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*") if p.is_file())
    sent = list(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"] + DEFAULT_IGNORE_PATTERNS))
    assert sent == [name for name, _ in plan.files] == [name for name, _ in selection(finished)]


def test_the_card_and_push_state_what_the_tracks_allow(finished):
    result = CliRunner().invoke(main, ["push", str(finished), "--repo-id", "someone/windows", "--dry-run",
                                       "--license", "apache-2.0"])
    assert result.exit_code == 0, result.output
    no_condition = "tracks by Lucas-Kanade on CPU: no weights, so no licence condition from the tracker"
    assert f"licence: apache-2.0; {no_condition}" in result.stderr and "warning" not in result.stderr
    card = (finished / "README.md").read_text()
    assert f"- `lk`: {no_condition}" in card and "**Warning:**" not in card


@pytest.mark.parametrize("license", ["apache-2.0", "mit", "cc-by-4.0"])
def test_a_licence_allowing_commercial_use_of_non_commercial_tracks_is_warned_about(finished, license):
    """The folder's config says its tracks came from CoTracker3 (a real CoTracker3 run: test_pipeline_cotracker3.py)."""
    path = finished / ".magma" / "sample" / "config.json"
    config = json.loads(path.read_text())
    config["track"]["tracker"] = "cotracker3"
    path.write_text(json.dumps(config))
    warned = push(finished, "someone/windows", dry_run=True, license=license)
    assert warned.tracks_licenses == ["tracks by CoTracker3: licence cc-by-nc-4.0 (non-commercial use only)"]
    assert warned.license_warnings == [
        f"the card's licence {license} allows commercial use, but the tracks of sample were made by CoTracker3, whose "
        "weights are cc-by-nc-4.0: pass --license cc-by-nc-4.0, or track again with a tracker whose weights allow it "
        "(--tracker tapnextpp)"]
    assert f"**Warning:** {warned.license_warnings[0]}." in (finished / "README.md").read_text()
    for claims_no_more in ("cc-by-nc-4.0", "cc-by-nc-sa-4.0", "other"):
        assert push(finished, "someone/windows", dry_run=True, license=claims_no_more).license_warnings == []
