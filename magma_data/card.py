"""The dataset card (README.md) of an output folder, made from what the folder holds.

One config per source folder (and a default over all), so both ``load_dataset(root)`` and
``load_dataset(root, "<source>")`` work; per source its counts from the ledger, its pipeline,
tracker and weights digest, and its whole config; the columns from the stages' declarations; a
licence field, and the licence each tracker's tracks carry (a warning where the field claims
more); the citations of Magma and of the trackers that made the tracks. The run writes
it when it ends, ``magma-data push`` again before uploading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from magma_data.outputs import SourceOutput, source_outputs
from magma_data.parquet_writer import DATA, table_files
from magma_data.pipelines import load_pipeline, shard_columns
from magma_data.schema import column_table
from magma_data.stages.track import TRACKERS

MAGMA_CITATION = """@misc{yang2025magmafoundationmodelmultimodal,
  title         = {Magma: A Foundation Model for Multimodal AI Agents},
  author        = {Jianwei Yang and Reuben Tan and Qianhui Wu and Ruijie Zheng and Baolin Peng and Yongyuan Liang and Yu Gu and Mu Cai and Seonghyeon Ye and Joel Jang and Yuquan Deng and Lars Liden and Jianfeng Gao},
  year          = {2025},
  eprint        = {2502.13130},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2502.13130}
}"""

#: The licence field when none is given: the rows hold frames and text of the source datasets,
#: whose own terms apply (Ego4D, EPIC-KITCHENS, SSv2 and Open-X each have their own).
DEFAULT_LICENSE = "other"
#: Licence fields (the Hub's ids) that forbid commercial use.
NON_COMMERCIAL = frozenset({
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
})
#: Licence fields that claim no terms of their own.
NO_CLAIM = frozenset({"other", "unknown"})


def tracks_license_line(tracker_name: str) -> str:
    """What the tracks of ``tracker_name`` allow, in one sentence, from its registry entry."""
    tracker = TRACKERS.get(tracker_name)
    if tracker is None:
        return f"tracks by {tracker_name}, a tracker this magma-data does not know: check its weights' licence"
    if tracker.tracks_license is None:
        return f"tracks by {tracker.label}: no weights, so no licence condition from the tracker"
    condition = "non-commercial use only" if tracker.tracks_license in NON_COMMERCIAL else "commercial use allowed"
    return f"tracks by {tracker.label}: licence {tracker.tracks_license} ({condition})"


def license_warnings(root: Path, license: str) -> list[str]:
    """Why the card's ``license`` claims more than the tracks in ``root`` allow: one line per tracker whose
    tracks forbid commercial use while the licence allows it (none for "other": the sources' terms)."""
    return _license_warnings(source_outputs(root), license)


def _license_warnings(outputs: list[SourceOutput], license: str) -> list[str]:
    if license in NON_COMMERCIAL or license in NO_CLAIM:
        return []
    sources: dict[str, list[str]] = {}
    for output in outputs:
        sources.setdefault(output.config.track.tracker, []).append(output.source)
    warnings = []
    for name, names in sorted(sources.items()):
        tracker = TRACKERS.get(name)
        if tracker is not None and tracker.tracks_license in NON_COMMERCIAL:
            warnings.append(f"the card's licence {license} allows commercial use, but the tracks of {', '.join(names)} "
                            f"were made by {tracker.label}, whose weights are {tracker.tracks_license}: pass --license "
                            f"{tracker.tracks_license}, or track again with a tracker whose weights allow it "
                            "(--tracker tapnextpp)")
    return warnings


def write_dataset_card(root: Path, license: str | None = None) -> Path:
    """README.md of ``root``; ``license`` None keeps the card's current licence (or ``DEFAULT_LICENSE``)."""
    path = Path(root) / "README.md"
    license = license or card_license(path) or DEFAULT_LICENSE
    path.write_text(dataset_card(Path(root), license))
    return path


def dataset_card(root: Path, license: str) -> str:
    outputs = source_outputs(root)
    with_rows = [o.source for o in outputs if table_files(root, o.source, DATA)]
    front = {
        "license": license,
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": "train", "path": "data/*/train-*"}]}]
        + [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/train-*"}]}
           for name in with_rows],
        "tags": ["set-of-mark", "trace-of-mark", "magma"],
    }
    if license == "other":
        front["license_name"] = "terms of the source datasets"
    pipelines = sorted({o.config.pipeline for o in outputs})
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# SoM/ToM windows made by magma-data ({', '.join(pipelines) or 'no run yet'})", "",
             "One row per window: the marked frame (`image`; frame `frame_pos` of the window, drawn as Magma",
             "draws it), the same frame with numbered marks (`som_image`), point tracks after camera-motion removal,",
             "homographies and their quality, marks, Trace-of-Mark targets on",
             "the 256x256 grid, and Magma conversation turns (`conversations`). Units that failed are listed with",
             "stage, error class and message under `errors/`; units a rule of the recipe dropped (Magma's Ego4D",
             "verb filter), with the rule, under `filtered/`.", "",
             "| source | rows | error rows | filtered | pipeline | tracker | weights (sha256) | config |",
             "|---|---:|---:|---:|---|---|---|---|"]
    lines += [_source_row(o) for o in outputs]
    lines += ["", "## Configuration of each source", "",
              "The resolved config of each source's run, the part its hash covers (every row's `config_hash`; "
              "where the input lay and how fast it ran are only in `.magma/<source>/config.json`, which is not "
              "published):", ""]
    for output in outputs:
        lines += [f"<details><summary><code>{output.source}</code></summary>", "", "```json",
                  json.dumps(output.config.hashed(), indent=2, sort_keys=True), "```", "", "</details>", ""]
    for pipeline in pipelines:
        config = next(o.config for o in outputs if o.config.pipeline == pipeline)
        lines += [f"## Columns ({pipeline})", "", column_table(shard_columns(load_pipeline(pipeline), config)), ""]
    lines += ["## Licence", "",
              f"Licence field: `{license}`. The rows hold frames and text of the source datasets, whose own terms "
              "apply to them (Ego4D, EPIC-KITCHENS-100, Something-Something v2 and each Open-X dataset have their "
              "own licences; Magma's released traces, Magma-Video-ToM, are MIT).", "",
              "The tracks, and the marks and text made from them, carry the licence of the tracker's weights:", ""]
    lines += [f"- `{name}`: {tracks_license_line(name)}" for name in sorted({o.config.track.tracker for o in outputs})]
    lines += [""] + [f"**Warning:** {warning}.\n" for warning in _license_warnings(outputs, license)]
    lines += ["## Citation", "", "Magma, whose SoM/ToM recipe this data follows:", "", "```bibtex", MAGMA_CITATION,
              "```", ""]
    for name in sorted({o.config.track.tracker for o in outputs}):
        tracker = TRACKERS.get(name)
        if tracker is not None and tracker.citation:
            lines += [f"The tracker ({tracker.label}):", "", "```bibtex", tracker.citation, "```", ""]
    return "\n".join(lines)


def _source_row(output: SourceOutput) -> str:
    rules = ", ".join(f"{rule} {count}" for rule, count in output.filter_rules.items())
    filtered = f"{output.filtered}" + (f" ({rules})" if rules else "")
    config = output.config
    weights = f"`{config.tracker_weights}`" if config.tracker_weights else "-"
    return (f"| `{output.source}` | {output.rows} | {output.errors} | {filtered} | {config.pipeline} | "
            f"{config.track.tracker} | {weights} | `{output.config_hash}` |")


def card_license(path: Path) -> str | None:
    """The licence field of the card at ``path`` (None: no card, or no field)."""
    if not path.is_file():
        return None
    match = re.match(r"---\n(.*?)\n---\n", path.read_text(), re.S)
    front = yaml.safe_load(match.group(1)) if match else None
    return front.get("license") if isinstance(front, dict) else None
