"""The ``folder`` source: every video under a directory, recursively, one clip per file.

Text is optional: a sidecar ``<video stem>.txt`` next to a video becomes its task. A video or
sidecar that is a symlink leading out of the root is reported, never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from magma_data.sources.base import VIDEO_SUFFIXES, Clip, ClipProblem, PathEscapesRoot, Source, resolve_inside


class FolderSource(Source):
    """One clip per video file under ``root``; ``name`` is the manifest's, the start of every unit id."""

    def __init__(self, root: Path, name: str, suffixes: tuple[str, ...] = VIDEO_SUFFIXES):
        self.root, self.name = Path(root).resolve(), name
        self.suffixes = tuple(s.lower() for s in suffixes)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--root {self.root} is not a directory; point it at a folder of videos")

    def clips(self) -> Iterator[Clip | ClipProblem]:
        videos = sorted(
            p for p in self.root.rglob("*")
            if p.suffix.lower() in self.suffixes and p.is_file() and not p.name.startswith(".")
        )
        for path in videos:
            relative = path.relative_to(self.root)
            clip_id = relative.with_suffix("").as_posix()
            try:
                resolve_inside(self.root, relative)
                task = self._sidecar_text(self.root, relative)
            except PathEscapesRoot as error:
                yield ClipProblem(unit_id=f"{self.name}/{clip_id}", error_class="PathEscapesRoot",
                                  message=str(error), video_path=str(path))
                continue
            except UnicodeDecodeError as error:
                yield ClipProblem(
                    unit_id=f"{self.name}/{clip_id}",
                    error_class="TextNotUtf8",
                    message=f"{path.with_suffix('.txt')} is not UTF-8 ({error}); re-save it as UTF-8",
                    video_path=str(path),
                )
                continue
            yield Clip(clip_id=clip_id, video_uid=clip_id, video_path=str(path), task=task)

    @staticmethod
    def _sidecar_text(root: Path, video: Path) -> str:
        sidecar = root / video.with_suffix(".txt")
        if not sidecar.is_file():
            return ""
        return resolve_inside(root, video.with_suffix(".txt")).read_bytes().decode("utf-8").strip()
