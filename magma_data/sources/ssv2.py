"""Something-Something v2 read in place: every labelled clip is one clip, whole.

Layout (``--root`` = the folder the archives were unpacked into)::

    20bn-something-something-v2/<id>.webm
    something-something-v2-labels.json        {template without brackets: class id}
    something-something-v2-train.json         [{id, label, template, placeholders}]
    something-something-v2-validation.json

or, as Qualcomm's download package unpacks the label files, ``labels/labels.json``,
``labels/train.json`` and ``labels/validation.json`` (the manifest's second layout).

The task is the template with its bracketed slots ("[something]", "[something in it]", ...) filled,
in order, by ``placeholders``, the instruction Magma trained on. The test split has no labels and is
not read by default. The release's files: docs/sources.md §Something-Something v2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from magma_data.sources.base import Clip, ClipProblem, Source
from magma_data.sources.metadata import load_json_lenient, metadata_file, text_problem, video_file

_SLOT = re.compile(r"\[[^\]]*\]")


class TemplateMismatch(ValueError):
    pass


def fill_template(template: str, placeholders: Sequence[str]) -> str:
    """``"Putting [something] on [something]"`` + ``["a cup", "a box"]`` -> ``"Putting a cup on a box"``."""
    slots = _SLOT.findall(template)
    if len(slots) != len(placeholders):
        raise TemplateMismatch(f"template has {len(slots)} slots but {len(placeholders)} placeholders were given")
    objects = iter(placeholders)
    return " ".join(_SLOT.sub(lambda _: str(next(objects)).strip(), template).split())


def template_key(template: str) -> str:
    """The key ``labels.json`` uses for a template: brackets dropped, words kept."""
    return " ".join(template.replace("[", "").replace("]", "").split())


class SomethingSomethingV2Source(Source):
    """Clips from SSv2's labelled splits; see the module docstring for the layout."""

    def __init__(
        self,
        root: Path,
        name: str,
        annotations: Sequence[str] = ("something-something-v2-train.json", "something-something-v2-validation.json"),
        labels: str | None = "something-something-v2-labels.json",
        videos: str = "20bn-something-something-v2",
        suffix: str = ".webm",
    ):
        """
        Args:
            root: folder holding the videos folder and the label files.
            name: the source's name (its manifest's); it begins every unit id.
            annotations: split files relative to ``root``, read in this order.
            labels: the template -> class id file; templates absent from it are reported. None skips
                the check.
            videos: folder of ``<id><suffix>`` relative to ``root``.
        """
        self.root = Path(root).resolve()
        self.name = name
        self.annotation_paths = [metadata_file(self.root, name, "annotations") for name in annotations]
        self.labels_path = metadata_file(self.root, labels, "labels") if labels else None
        self.videos = videos
        self.suffix = suffix

    def clips(self) -> Iterator[Clip | ClipProblem]:
        known = set(load_json_lenient(self.labels_path)) if self.labels_path else None
        seen: set[str] = set()
        for path in self.annotation_paths:
            entries = load_json_lenient(path)
            if not isinstance(entries, list):
                raise ValueError(f"{path}: expected a JSON list of {{id, label, template, placeholders}}")
            for position, entry in enumerate(entries):
                where = f"{path.name}[{position}]"
                video_id = str(entry.get("id", "")).strip() if isinstance(entry, dict) else ""
                if video_id and video_id in seen:  # the first entry already owns the plain unit id
                    yield ClipProblem(f"{self.name}/{video_id}@{where}", "DuplicateId",
                                      f"{where}: id {video_id} appears twice; list each split file once")
                    continue
                seen.add(video_id)
                yield self._clip(entry, where, known)

    def _clip(self, entry, where: str, known: set[str] | None) -> Clip | ClipProblem:
        video_id = str(entry.get("id", "")).strip() if isinstance(entry, dict) else ""
        unit = f"{self.name}/{video_id or where}"
        if not video_id:
            return ClipProblem(unit, "UnknownVideoId", f"{where}: entry has no id ({entry!r:.120})")
        path = video_file(self.root, unit, f"{self.videos}/{video_id}{self.suffix}")
        if isinstance(path, ClipProblem):
            return ClipProblem(unit, path.error_class, f"{where}: {path.message}", path.video_path)
        template = entry.get("template") or ""
        placeholders = entry.get("placeholders") or []
        problem = text_problem(unit, template, f"{where}: template", str(path))
        if problem:
            return problem
        if known is not None and template_key(template) not in known:
            return ClipProblem(unit, "UnknownTemplate",
                               f"{where}: template {template!r} is not a class in {self.labels_path.name}; "
                               "use label files from the same release", str(path))
        for placeholder in placeholders:
            if not isinstance(placeholder, str):
                return ClipProblem(unit, "BadPlaceholder", f"{where}: placeholder {placeholder!r} is not text",
                                   str(path))
            problem = text_problem(unit, placeholder, f"{where}: placeholder", str(path))
            if problem:
                return problem
        try:
            task = fill_template(template, placeholders)
        except TemplateMismatch as error:
            return ClipProblem(unit, "TemplateMismatch", f"{where}: {error} ({template!r}, {placeholders!r})",
                               str(path))
        return Clip(
            clip_id=video_id,
            video_uid=video_id,
            video_path=str(path),
            task=task,
            extra={"template": template, "label": str(entry.get("label", ""))},
        )
