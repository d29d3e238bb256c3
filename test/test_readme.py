"""The README and docs/: the README stays short, every relative link resolves, and the README's results table
is the summary table of the committed RESULTS.md."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "egs2" / "aishell_ner" / "llm1" / "RESULTS.md"
MAX_README_LINES = 250

FENCED = re.compile(r"^ *(```|~~~).*?^ *\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)[^)]*\)")


def relative_links(path):
    """(line number, target) of every markdown link in ``path`` that is not a URL, an anchor or a mail address;
    code blocks and code spans are left out."""
    text = path.read_text(encoding="utf-8")
    text = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    links = []
    for number, line in enumerate(text.split("\n"), 1):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1).strip("<>")
            if not target.startswith(("http://", "https://", "#", "mailto:")):
                links.append((number, target))
    return links


def section_table(path, heading):
    """The first markdown table (its lines starting with '|') under the ``## heading`` of ``path``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == f"## {heading}")
    except StopIteration:
        pytest.fail(f"{path.relative_to(ROOT)} has no '## {heading}' section")
    table = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append(line.rstrip())
        elif table:
            break
    assert table, f"{path.relative_to(ROOT)}: no table under '## {heading}'"
    return table


def test_readme_length_and_links():
    n_lines = len(README.read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_README_LINES, f"README.md has {n_lines} lines, at most {MAX_README_LINES}: move the rest to docs/"
    files = [README, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) > 1, "docs/ holds no markdown file"
    broken = []
    for path in files:
        for number, target in relative_links(path):
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_readme_results_table_is_the_summary_of_results_md():
    if not RESULTS.exists():
        pytest.fail(f"{RESULTS.relative_to(ROOT)} is missing: run the main command (./run.sh in "
                    "egs2/aishell_ner/llm1) and commit its RESULTS.md")
    readme = section_table(README, "Results")
    summary = section_table(RESULTS, "Summary")
    assert readme == summary, (
        "the table under README.md's '## Results' differs from the one under '## Summary' of "
        f"{RESULTS.relative_to(ROOT)}; copy it from there.\nREADME.md:\n" + "\n".join(readme)
        + f"\n{RESULTS.relative_to(ROOT)}:\n" + "\n".join(summary))
