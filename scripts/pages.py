"""Markdown pages written by the scripts: read a results table back, rewrite a generated block in place."""

from __future__ import annotations

import sys
from pathlib import Path


def table_rows(
    md: Path, keys, n_key: int = 1, min_cells: int = 2, stop: str | None = None, start: str | None = None
) -> dict:
    """``{key: cells}`` of the table rows on page ``md`` whose first ``n_key`` cells are a key in ``keys``.

    The first row of each key wins; text from ``stop`` on is not read (a generated block that repeats
    the keys), nor text before ``start`` when given (nothing when the page has no ``start``). Empty when
    the page does not exist.
    """
    rows = {}
    if not md.is_file():
        return rows
    text = md.read_text()
    if start is not None:
        text = text.split(start, 1)[1] if start in text else ""
    for line in (text.split(stop)[0] if stop else text).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = tuple(cells[:n_key]) if n_key > 1 else cells[0]
        if line.startswith("|") and len(cells) >= min_cells and key in keys and key not in rows:
            rows[key] = cells
    return rows


def replace_block(md: Path, begin: str, end: str, lines: list[str], before: str | None = None) -> None:
    """Put ``begin``, ``lines``, ``end`` into page ``md``: in place of an earlier block, else before the
    text ``before`` (at the end of the page when it is None or absent)."""
    text = md.read_text()
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif before and before in text:
        head, tail = text.split(before, 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n\n" + before + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(text)


def section(md: Path, heading: str) -> str:
    """The text under ``heading`` on a page, up to the next heading or table caption ('' if none)."""
    if not md.is_file() or f"\n{heading}\n" not in md.read_text():
        return ""
    body = md.read_text().split(f"\n{heading}\n", 1)[1]
    return body.split("\n#", 1)[0].split("\nPublished (", 1)[0].strip()


def write_page(path: Path, text: str, count, force: bool = False) -> bool:
    """Write ``text`` to page ``path`` unless it holds fewer results than the page already there
    (``count(page text) -> int``); a committed page is never replaced by a poorer one (``force``
    overrides). Returns whether the page was written."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    n_new, n_old = count(text), (count(old) if old else 0)
    if n_new < n_old and not force:
        print(f"{path}: not rewritten: it holds {n_old} results and this run has {n_new} "
              "(pass --force to replace it)", file=sys.stderr)  # fmt: skip
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def is_number(cell: str) -> bool:
    try:
        float(cell.split()[0])
    except (ValueError, IndexError):
        return False
    return True
