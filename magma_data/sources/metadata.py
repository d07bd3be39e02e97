"""Reading dataset metadata files without letting one bad row sink the whole file.

Official metadata is large and mostly clean; the rare row with bytes that are not UTF-8 must
become one ``ClipProblem``, not a ``UnicodeDecodeError`` that stops the reader. Files are
therefore decoded with ``surrogateescape``: valid text is unchanged, invalid bytes survive as
lone surrogates that ``text_problem`` detects per row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magma_data.sources.base import ClipProblem, PathEscapesRoot, resolve_inside


def read_text_lenient(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 come through as lone surrogates."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def load_json_lenient(path: Path) -> Any:
    try:
        return json.loads(read_text_lenient(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-download it") from error


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_problem(unit_id: str, text: str, what: str, video_path: str = "") -> ClipProblem | None:
    """A problem row when ``text`` is not UTF-8 or empty; None when it is usable (any script is)."""
    if not is_utf8(text):
        shown = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
        return ClipProblem(
            unit_id=unit_id,
            error_class="TextNotUtf8",
            message=f"{what} {shown!r} contains bytes that are not UTF-8; fix the metadata file's encoding",
            video_path=video_path,
        )
    if not text.strip():
        return ClipProblem(
            unit_id=unit_id,
            error_class="EmptyText",
            message=f"{what} is empty; the sample would have no task text",
            video_path=video_path,
        )
    return None


class MetadataNotFound(FileNotFoundError):
    """A metadata file a reader needs is not under the folder it was given (``open_source`` then
    looks for the release folder inside it)."""


def metadata_file(root: Path, relative: str, option: str) -> Path:
    """A metadata file under ``root`` that must exist; the error names the reader option to set."""
    try:
        path = resolve_inside(root, relative)
    except PathEscapesRoot as error:
        raise ValueError(f"option {option}: {error}") from error
    if not path.is_file():
        raise MetadataNotFound(
            f"{path} not found; point --root at the dataset folder or set the reader option "
            f"{option} (currently {relative!r}) to the file's path relative to the root"
        )
    return path


def video_file(root: Path, unit_id: str, relative: str) -> Path | ClipProblem:
    """The video under ``root``, or the problem row that says why it cannot be used."""
    try:
        path = resolve_inside(root, relative)
    except PathEscapesRoot as error:
        return ClipProblem(unit_id=unit_id, error_class="PathEscapesRoot", message=str(error))
    if not path.is_file():
        return ClipProblem(
            unit_id=unit_id,
            error_class="VideoMissing",
            message=f"{path} not found; download it or check --root",
            video_path=str(path),
        )
    return path
