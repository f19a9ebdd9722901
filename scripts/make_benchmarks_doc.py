"""Write docs/benchmarks.md from scripts/results/*.json, and the measured blocks of README.md and docs/*.md.

    python scripts/make_benchmarks_doc.py           # rewrite them (make docs)
    python scripts/make_benchmarks_doc.py --check   # exit 1 naming the pages a result file has outdated

Every table on the page is read from a result file, so a regenerated result cannot leave an old number behind
(tests/test_docs.py fails until the page is rewritten). The prose about what each benchmark measures and its
caveats is in ``benchmarks_doc_text.py`` next to this script; numbers in that prose are read from the files too.
A page elsewhere quotes a measurement through a block the script fills in::

    <!-- generated:optimum-comparison -->
    ...replaced on every run...
    <!-- /generated:optimum-comparison -->

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmarks_doc_text as text  # the prose lives next to this script
from benchmarks_doc_text import rows_of, rows_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n).*?(\n<!-- /generated:(?P=name) -->)", re.S)
FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
         ("avx512_bf16", "AVX-512 BF16"), ("amx_int8", "AMX-INT8"))


def load_results(results: Path = RESULTS) -> dict[str, dict]:
    """``{file stem: parsed JSON}`` of every result file, by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def generic_table(data: dict) -> str:
    """Every scalar field of every row, for a result file the page has no layout for yet."""
    rows = rows_of(data)
    keys = list(dict.fromkeys(k for _, r in rows for k, v in r.items() if isinstance(v, (int, float, str, bool))))
    return rows_table(data, [(k, k, "") for k in keys])


def cpu_line(cpu: dict | None) -> str:
    if not cpu:
        return "not recorded"
    flags = ", ".join(name for key, name in FLAGS if (cpu.get("flags") or {}).get(key))
    cores = cpu.get("available_cores") or cpu.get("logical_cores")
    return f"{cpu.get('model') or 'unknown'} ({cpu.get('machine', '')}, {cores} cores{'; ' + flags if flags else ''})"


def threads_line(threads: dict | None) -> str:
    threads = threads or {}
    requested = threads.get("requested")
    line = f"{requested}" if requested else "the default"
    if threads.get("torch") is not None:
        line += f" (torch intra-op {threads['torch']})"
    return line


def provenance(stem: str, data: dict) -> str:
    """Where the numbers come from: command, commit, CPU, threads, date, versions, load."""
    commit = data.get("git_commit")
    committed = data.get("committed_in") or {}
    if commit:
        commit_text = f"`{commit[:7]}`" + (" (uncommitted changes)" if data.get("dirty") else "")
    elif committed:
        commit_text = f"not recorded; the file was committed in `{committed['commit'][:7]}`"
    else:
        commit_text = "not recorded"
    date = data.get("created") or (f"not recorded (committed {committed['date']})" if committed else "not recorded")
    versions = data.get("versions") or {}
    stack = ", ".join(f"{k} {versions[k]}" for k in ("transformers", "torch", "onnxruntime", "optimum")
                      if versions.get(k))
    lines = [f"- Command: `{data.get('command')}`", f"- Result file: [`scripts/results/{stem}.json`]"
             f"(../scripts/results/{stem}.json)", f"- Commit: {commit_text}", f"- CPU: {cpu_line(data.get('cpu'))}",
             f"- Threads: {threads_line(data.get('threads'))}", f"- Date: {date}"]
    if stack:
        lines.append(f"- Versions: {stack}")
    load = data.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines.append(f"- Load average (1 min) at start / end: {load['start'][0]} / {load['end'][0]}")
    if data.get("regenerated") is False:
        lines.append("- **Not regenerated since the current data order** (every split in a seeded, stratified order; "
                     "every count of rows a stratified sample). " + (data.get("note") or
                     f"Regenerate: `{data.get('regenerate') or data.get('command')}`."))
    return "\n".join(lines)


def layout_of(stem: str) -> dict | None:
    return text.SECTIONS.get(stem) or text.SECTIONS.get(text.ALIASES.get(stem, ""))


def threads_suffix(stem: str, data: dict) -> str:
    """`` (N threads)`` after a title, unless the layout says threads do not matter (``"threads": False``)."""
    return "" if (layout_of(stem) or {}).get("threads") is False else f" ({text.threads_text(data)})"


def section(stem: str, data: dict) -> str:
    layout = layout_of(stem)
    if layout is None:
        parts = [f"## {stem}", "No description yet: every scalar field of its rows.", generic_table(data)]
    else:
        what = layout["what"](data) if callable(layout["what"]) else layout["what"]
        parts = [f"## {stem}", f"**{layout['title']}**{threads_suffix(stem, data)}", what]
        parts += [layout["table"](data) if callable(layout["table"]) else
                  rows_table(data, layout["table"], layout.get("labels"), layout.get("first", "variant"))]
        notes = layout.get("notes")
        if notes:
            parts.append(notes(data))
    return "\n\n".join(p.strip() for p in parts + [provenance(stem, data)] if p and p.strip())


def render_page(results: dict[str, dict]) -> str:
    """The whole of docs/benchmarks.md."""
    order = [s for s in text.ORDER if s in results] + sorted(s for s in results if s not in text.ORDER)
    titles = {s: (layout_of(s) or {}).get("title", "no description yet") for s in order}
    contents = "\n".join(f"- [{s}](#{s}): {titles[s]}{threads_suffix(s, results[s])}" for s in order)
    body = "\n\n".join(section(s, results[s]) for s in order)
    return f"{text.HEADER.strip()}\n\n## Contents\n\n{contents}\n\n{body}\n"


def fill_blocks(page: str, results: dict[str, dict]) -> str:
    """``page`` with every ``<!-- generated:NAME -->`` block rewritten from the results."""
    def replace(m: re.Match) -> str:
        snippet = text.SNIPPETS.get(m["name"])
        if snippet is None:
            raise SystemExit(f"unknown generated block {m['name']!r}; known: {', '.join(sorted(text.SNIPPETS))}")
        return m.group(1) + snippet(results).strip() + m.group(3)
    return BLOCK_RE.sub(replace, page)


def outputs(results: dict[str, dict], page: Path = PAGE, root: Path = ROOT) -> dict[Path, str]:
    """``{path: text}`` of every page the results decide: the benchmarks page and the pages with blocks."""
    out = {page: render_page(results)}
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path.resolve() != page.resolve() and path.is_file():
            old = path.read_text()
            out[path] = fill_blocks(old, results)
    return out


def write_atomic(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of result files (default: %(default)s)")
    ap.add_argument("-o", "--output", type=Path, default=PAGE, help="the benchmarks page (default: %(default)s)")
    ap.add_argument("--root", type=Path, default=ROOT, help="folder holding README.md and docs/ whose generated "
                    "blocks are filled in (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the pages out of date")
    args = ap.parse_args(argv)
    pages = outputs(load_results(args.results), args.output, args.root)
    stale = [p for p, content in pages.items() if not p.is_file() or p.read_text() != content]
    if args.check:
        for p in stale:
            print(f"out of date: {p} (run `make docs`)", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        write_atomic(p, pages[p])
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
