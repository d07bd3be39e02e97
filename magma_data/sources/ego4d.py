"""Ego4D read in place: narrations become clips of the full-scale videos.

Layout (as ``ego4d --output_directory DIR --datasets full_scale annotations --metadata`` leaves it in
``DIR/v2/``; ``--root`` is ``DIR`` or ``DIR/v2``)::

    ego4d.json                       videos[*]: video_uid, is_stereo, video_metadata{fps, num_frames}, duration_sec
    annotations/narration.json       {video_uid: {narration_pass_1: {narrations: [{timestamp_sec, narration_text}]}}}
    full_scale/<video_uid>.mp4

Narrations are point timestamps. Each becomes the span from its timestamp to the next narration of
the same pass, at most ``max_duration_sec`` long, as Magma's narration-derived segments are.
Magma's filters apply (segments of at least 1 s, no idle verbs such as "walk"; the narrations they
drop go to the filtered table, not the errors), but verbs match whole words: "sidewalk" and
"understand" no longer drop a narration (docs/magma-som-tom.md §Defects 6). Empty text is an error row.
Magma's stride down to 1,000,000 items is a training choice, left to ``magma-train --data out/ego4d:W``
(docs/magma-som-tom.md §Deviations).
The release's layout and metadata: docs/sources.md §Ego4D.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from magma_data.dropped import FILTERED
from magma_data.sources.base import Clip, ClipProblem, Source
from magma_data.sources.metadata import load_json_lenient, metadata_file, text_problem, video_file

#: Magma's ego4d filter (data/ego4d/data_utils.py), matched as whole words with inflections.
MAGMA_DROPPED_PHRASES = ("converse", "walk", "laugh", "stand", "move around", "looks around")


def phrase_pattern(phrases: Sequence[str]) -> re.Pattern | None:
    """One case-insensitive pattern matching any phrase as whole words, each word inflected.

    "walk" matches "walk", "walks", "walked", "walking" but not "sidewalk"; "converse" matches
    "conversing"; "stand" does not match "understand".
    """

    def word(w: str) -> str:
        if w.endswith("e"):  # move -> moves, moved, moving
            return rf"{re.escape(w[:-1])}(?:e|es|ed|ing)"
        return rf"{re.escape(w)}(?:s|es|ed|ing)?"

    alternatives = [r"\s+".join(word(w) for w in phrase.split()) for phrase in phrases if phrase.strip()]
    if not alternatives:
        return None
    return re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE)


_UNSURE = re.compile(r"#\s*unsure\b", re.IGNORECASE)
_SPEAKER_TAG = re.compile(r"#\s*[CO]\b", re.IGNORECASE)
_CAMERA_WEARER = re.compile(r"\bC\b")  # "C" is how narrators name the camera wearer


def clean_narration(text: str) -> str:
    """"#C C opens the door" -> "the person opens the door".

    Tags go, an unsure object becomes "something" (Ego4D's own convention), and the camera
    wearer "C" becomes "the person", the subject Magma's prompts use.
    """
    text = _UNSURE.sub("something", text)
    text = _SPEAKER_TAG.sub(" ", text)
    text = _CAMERA_WEARER.sub("the person", text)
    return " ".join(text.split())


class Ego4DSource(Source):
    """Clips around Ego4D narrations; see the module docstring for the layout it reads."""

    def __init__(
        self,
        root: Path,
        name: str,
        metadata: str = "ego4d.json",
        narrations: str = "annotations/narration.json",
        videos: str = "full_scale",
        passes: Sequence[str] = ("narration_pass_1",),
        max_duration_sec: float = 8.0,
        min_duration_sec: float = 1.0,
        drop_phrases: Sequence[str] = MAGMA_DROPPED_PHRASES,
    ):
        """
        Args:
            root: the Ego4D ``v2`` folder.
            name: the source's name (its manifest's); it begins every unit id.
            metadata, narrations: metadata files relative to ``root``.
            videos: folder of ``<video_uid>.mp4`` relative to ``root`` (``video_540ss`` also works).
            passes: narration passes to read; the two passes narrate the same video twice.
            max_duration_sec: longest span after a narration when the next one is far away.
            min_duration_sec: shorter spans are reported, not planned (Magma: 1 s).
            drop_phrases: narrations naming these idle actions are reported and skipped.
        """
        self.root = Path(root).resolve()
        self.name = name
        self.metadata_path = metadata_file(self.root, metadata, "metadata")
        self.narrations_path = metadata_file(self.root, narrations, "narrations")
        self.videos = videos
        self.passes = tuple(passes)
        self.max_duration_sec = max_duration_sec
        self.min_duration_sec = min_duration_sec
        self.drop_pattern = phrase_pattern(drop_phrases)

    def clips(self) -> Iterator[Clip | ClipProblem]:
        videos = {
            str(video.get("video_uid")): video
            for video in load_json_lenient(self.metadata_path).get("videos", [])
            if isinstance(video, dict)
        }
        narrations = load_json_lenient(self.narrations_path)
        if not isinstance(narrations, dict):
            raise ValueError(f"{self.narrations_path}: expected {{video_uid: {{narration_pass_1: ...}}}}")
        for video_uid in sorted(narrations):
            yield from self._video_clips(video_uid, narrations[video_uid], videos.get(video_uid))

    def _video_clips(self, video_uid: str, annotation, video: dict | None) -> Iterator[Clip | ClipProblem]:
        unit = f"{self.name}/{video_uid}"
        passes = {
            name: annotation[name].get("narrations") or []
            for name in self.passes
            if isinstance(annotation, dict) and isinstance(annotation.get(name), dict)
        }
        count = sum(len(items) for items in passes.values())
        if not count:
            return
        if video is None:
            yield ClipProblem(
                unit, "UnknownVideoUid",
                f"{count} narrations name video {video_uid!r}, which {self.metadata_path.name} does not list; "
                "re-download the metadata (ego4d --metadata) so both files are from the same release",
            )
            return
        path = video_file(self.root, unit, f"{self.videos}/{video_uid}.mp4")
        if isinstance(path, ClipProblem):
            yield _with_message(path, f"{path.message} ({count} narrations wait on this video: "
                                      f"ego4d --datasets full_scale --video_uids {video_uid})")
            return
        if video.get("is_stereo"):
            yield ClipProblem(
                unit, "StereoVideo",
                f"{count} narrations skipped: {video_uid} is side-by-side stereo and would be tracked as one "
                "image; such videos are excluded until per-eye cropping exists",
                str(path),
            )
            return
        meta = video.get("video_metadata") or {}
        fps = _positive(meta.get("fps"))
        num_frames = _positive(meta.get("num_frames"))
        duration = _positive(video.get("duration_sec")) or _positive(meta.get("video_duration_sec"))
        for pass_name, items in passes.items():
            yield from self._pass_clips(video_uid, pass_name, items, path, fps, num_frames, duration)

    def _pass_clips(self, video_uid, pass_name, items, path, fps, num_frames, duration):
        timed = []
        for index, item in enumerate(items):
            unit = f"{self.name}/{video_uid}/{pass_name}/{index:05d}"
            stamp = _number(item.get("timestamp_sec")) if isinstance(item, dict) else None
            if stamp is None or stamp < 0:
                yield ClipProblem(unit, "BadTimestamp",
                                  f"narration has no usable timestamp_sec ({item!r:.120}); fix or drop the row",
                                  str(path))
                continue
            timed.append((stamp, index, item))
        timed.sort(key=lambda entry: (entry[0], entry[1]))
        for position, (start, index, item) in enumerate(timed):
            clip_id = f"{video_uid}/{pass_name}/{index:05d}"
            unit = f"{self.name}/{clip_id}"
            raw = item.get("narration_text") if isinstance(item.get("narration_text"), str) else ""
            problem = text_problem(unit, raw, "narration_text", str(path))
            if problem:
                yield problem
                continue
            task = clean_narration(raw)
            if not task:
                yield ClipProblem(unit, "EmptyText", f"narration {raw!r} has no words once its tags are removed",
                                  str(path))
                continue
            if self.drop_pattern and (match := self.drop_pattern.search(task)):
                yield ClipProblem(unit, "NarrationFiltered",
                                  f"{task!r} names the idle action {match.group(0)!r} (Magma's Ego4D filter); "
                                  "set the reader option drop_phrases to change the list", str(path), kind=FILTERED)
                continue
            end = start + self.max_duration_sec
            if position + 1 < len(timed):
                end = min(end, timed[position + 1][0])
            if duration is not None:
                if start >= duration:
                    yield ClipProblem(unit, "NarrationOutsideVideo",
                                      f"timestamp {start:.3f} s is past the video's end ({duration:.3f} s)", str(path))
                    continue
                end = min(end, duration)
            if end <= start:
                yield ClipProblem(unit, "ZeroLengthWindow",
                                  f"the next narration has the same timestamp ({start:.3f} s), so this one spans "
                                  "no time; nothing to track", str(path))
                continue
            if end - start < self.min_duration_sec:
                yield ClipProblem(unit, "NarrationTooShort",
                                  f"span {start:.3f}-{end:.3f} s is shorter than min_duration_sec "
                                  f"{self.min_duration_sec} s (Magma's Ego4D filter)", str(path), kind=FILTERED,
                                  value=round(end - start, 6))
                continue
            yield Clip(
                clip_id=clip_id,
                video_uid=video_uid,
                video_path=str(path),
                task=task,
                start_sec=start,
                end_sec=end,
                fps=fps,
                num_frames=int(num_frames) if num_frames else None,
                extra={"narration_pass": pass_name, "timestamp_sec": f"{start:.6f}", "narration_text": raw},
            )


def _with_message(problem: ClipProblem, message: str) -> ClipProblem:
    return ClipProblem(problem.unit_id, problem.error_class, message, problem.video_path)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _positive(value) -> float | None:
    number = _number(value)
    return number if number and number > 0 else None
