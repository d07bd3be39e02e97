from __future__ import annotations

import pytest

from magma_data.config import RunConfig, parse_assignments
from magma_data.sources import available_sources, load_manifest


def test_hash_is_stable_and_ignores_speed_settings():
    base = RunConfig()
    assert base.hash() == RunConfig().hash()
    assert base.with_overrides({"track": {"batch_size": 64, "device": "cuda:1"}}).hash() == base.hash()
    assert base.with_overrides({"marks": {"moving_threshold_px": 1.0}}).hash() != base.hash()
    assert base.with_overrides({"track": {"tracker": "cotracker3"}}).hash() != base.hash()


def test_overrides_are_typed_and_unknown_names_refused():
    config = RunConfig().with_overrides(parse_assignments(("marks.moving_clusters=[2, 4]", "camera.force=true")))
    assert config.marks.moving_clusters == (2, 4) and config.camera.force is True
    with pytest.raises(ValueError, match="unknown option marks.moving"):
        RunConfig().with_overrides({"marks": {"moving": 1}})
    with pytest.raises(ValueError, match="unknown config section"):
        RunConfig().with_overrides({"tracking": {}})
    with pytest.raises(ValueError, match="section.field=value"):
        parse_assignments(("seed",))


def test_every_manifest_applies_cleanly_to_the_config():
    for name in available_sources():
        manifest = load_manifest(name)
        RunConfig(source=name, pipeline=manifest.pipeline).with_overrides(manifest.defaults)


def test_unknown_source_names_the_available_ones():
    with pytest.raises(KeyError, match="available: .*folder"):
        load_manifest("nope")
