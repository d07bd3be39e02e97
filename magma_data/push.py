"""``magma-data push``: a finished output folder to a Hugging Face dataset repository.

The folder is refused unless every source's ledger is complete and no half-written file is left
(``magma_data.outputs.finished_sources``). The dataset card is made again from what the folder
holds (``magma_data.card``). The upload is one call, ``HfApi.upload_folder``: since
huggingface_hub 1.20 it commits large folders in batches and resumes an interrupted upload when
run again (its ``upload_large_folder``, which did this before, was deprecated then and removed in
2.0). What it sends is the folder minus ``IGNORE_PATTERNS`` and the library's own
``DEFAULT_IGNORE_PATTERNS``; ``selection`` applies the same patterns with the library's own
filter, so ``--dry-run`` lists exactly the files the call would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from magma_data.card import card_license, license_warnings, tracks_license_line, write_dataset_card
from magma_data.outputs import STATE, finished_sources, source_outputs

#: Never uploaded: the runs' ledgers and resolved configs, and half-written files.
IGNORE_PATTERNS = [f"{STATE}/*", "*.partial"]


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    revision: str | None
    files: list[tuple[str, int]]  # path in the repository, size in bytes
    license: str  # the card's licence field
    tracks_licenses: list[str]  # what each tracker's tracks allow, one line a tracker
    license_warnings: list[str]  # where the card's licence claims more than the tracks allow

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


def selection(root: Path) -> list[tuple[str, int]]:
    """(path, size) of every file ``upload_folder`` would send from ``root``, in its order."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(root).resolve()
    files = {path.relative_to(root).as_posix(): path for path in sorted(root.glob("**/*")) if path.is_file()}
    chosen = filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS)
    return [(name, files[name].stat().st_size) for name in chosen]


def push(root: Path, repo_id: str, private: bool = False, revision: str | None = None, license: str | None = None,
         dry_run: bool = False, notify: Callable[[str], None] | None = None) -> PushPlan:
    """Refuse an unfinished folder, refresh its card, and upload it (or, with ``dry_run``, only say what would go).

    Before the upload ``notify`` hears the card's licence and what the tracks allow, and a warning
    where the licence claims more (commercial use of CoTracker3's tracks): warned, not refused."""
    finished_sources(Path(root))
    license = card_license(write_dataset_card(Path(root), license))
    trackers = sorted({output.config.track.tracker for output in source_outputs(Path(root))})
    plan = PushPlan(repo_id, revision, selection(root), license, [tracks_license_line(name) for name in trackers],
                    license_warnings(Path(root), license))
    if notify is not None:
        notify(f"licence: {plan.license}; " + "; ".join(plan.tracks_licenses))
        for warning in plan.license_warnings:
            notify(f"warning: {warning}")
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(root), repo_type="dataset", revision=revision,
                      ignore_patterns=list(IGNORE_PATTERNS), commit_message="Upload a magma-data output folder")
    return plan
