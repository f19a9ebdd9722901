"""Stage fingerprints are a storage format: a finished stage re-runs when its fingerprint changes. These are the
fingerprints of every ready recipe and of a fixture recipe that sets many non-default fields of every stage kind,
recorded when they were introduced. A refactor must leave them equal; a deliberate change (a new data order, a
changed default) updates fingerprints.json and says why in CHANGELOG.md.

Regenerate (only for a deliberate change): ``python tests/test_fingerprints.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hf_optim.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "fingerprints.json"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + [Path(__file__).parent / "fixtures" / "fingerprint-recipe.yaml"]


def _portable(recipe: Recipe) -> dict[str, str]:
    # a stage that reads a path (not a stage or builtin) hashes the path's identity, which differs per checkout
    return {name: fp for name, fp in recipe.stage_fingerprints().items()
            if not _reads_path(recipe, name)}


def _reads_path(recipe: Recipe, name: str) -> bool:
    names = {s.name for s in recipe.stages}
    seen = set()
    for s in recipe.stages:
        refs = [getattr(s.config, f) for f in type(s.config).inputs if getattr(s.config, f) is not None]
        task = getattr(s.config, "task", None)
        own = any(r not in names and not r.startswith("builtin:") for r in refs) or isinstance(task, dict)
        if own or any(r in seen for r in refs):
            seen.add(s.name)
    return name in seen


def current() -> dict[str, dict[str, str]]:
    return {p.name: _portable(Recipe.from_yaml(p)) for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_stage_fingerprints_are_unchanged(path):
    recorded = json.loads(FIXTURE.read_text())
    assert path.name in recorded, f"{path.name} has no recorded fingerprints: run python {__file__} --write"
    assert _portable(Recipe.from_yaml(path)) == recorded[path.name]


if __name__ == "__main__" and "--write" in sys.argv:
    FIXTURE.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
