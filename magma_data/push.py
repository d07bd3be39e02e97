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

from magma_data.card import write_dataset_card
from magma_data.outputs import STATE, finished_sources

#: Never uploaded: the runs' ledgers and resolved configs, and half-written files.
IGNORE_PATTERNS = [f"{STATE}/*", "*.partial"]


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    revision: str | None
    files: list[tuple[str, int]]  # path in the repository, size in bytes

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
         dry_run: bool = False) -> PushPlan:
    """Refuse an unfinished folder, refresh its card, and upload it (or, with ``dry_run``, only say what would go)."""
    finished_sources(Path(root))
    write_dataset_card(Path(root), license)
    plan = PushPlan(repo_id, revision, selection(root))
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
