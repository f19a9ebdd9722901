"""The documentation: generated pages match the result files, links resolve, the README stays a front page."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 150


def _generator():
    spec = importlib.util.spec_from_file_location("make_benchmarks_doc", ROOT / "scripts" / "make_benchmarks_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_benchmarks_page_and_measured_blocks_match_the_result_files(tmp_path):
    # regenerate into a copy of the pages: a result file changed without `make docs` fails here
    (tmp_path / "docs").mkdir()
    for page in PAGES:
        shutil.copy(page, tmp_path / page.relative_to(ROOT))
    out = tmp_path / "docs" / "benchmarks.md"
    out.unlink()
    assert _generator().main(["--root", str(tmp_path), "-o", str(out)]) == 0
    for page in PAGES:
        fresh = (tmp_path / page.relative_to(ROOT)).read_text()
        assert fresh == page.read_text(), f"{page.relative_to(ROOT)} is out of date with scripts/results/: run `make docs`"


def test_every_result_file_has_a_section():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for result in sorted((ROOT / "scripts" / "results").glob("*.json")):
        assert f"\n## {result.stem}\n" in page, result.name


def test_the_check_mode_reports_a_stale_page(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    stale = tmp_path / "docs" / "benchmarks.md"
    stale.write_text("# Benchmarks\n")
    assert _generator().main(["--root", str(tmp_path), "-o", str(stale), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err and stale.read_text() == "# Benchmarks\n"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK_RE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(ROOT)}: link to {target} points to nothing"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.relative_to(ROOT)}: no heading #{anchor} in {path or page.name}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_the_readme_keeps_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo   # sets up .venv and runs recipes/movie-sentiment.yaml on the embedded real data and model\n" in readme
    assert "make test   # sets up .venv and runs the whole test suite (make test-tf5: the same on transformers 5)\n" in readme


def test_every_stage_field_is_documented():
    import dataclasses

    from hf_optim.recipe import stage_kinds

    page = (ROOT / "docs" / "recipes.md").read_text()
    # hf_optim's own kinds (test modules define stage kinds of their own at collection)
    missing = [f"{kind}.{name}" for kind, cls in stage_kinds().items() if cls.__module__.startswith("hf_optim.")
               for name in (f.name for f in dataclasses.fields(cls)) if f"`{name}`" not in page]
    assert not missing, f"docs/recipes.md does not document: {', '.join(missing)}"
