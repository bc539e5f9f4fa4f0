"""Markdown tables, as `vlft compare` prints them and `vlft sweep` writes them into sweep.md."""

from __future__ import annotations

from collections.abc import Callable


def plain_cell(value) -> str:
    """A missing value as "-", a float to four significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], cell: Callable[[object], str] = plain_cell) -> str:
    """One column per key, in first-seen order over the rows; a key a row lacks is an empty value there."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
