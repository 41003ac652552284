"""Go's text/tabwriter, as kubectl uses it (pure): tab-separated cells in, aligned text out.

kubectl's tables (`get`) and its describers write cells separated by tabs through a
tabwriter; the alignment rules matter for output to match byte for byte: a cell is
tab-terminated (the last cell of a line is never padded), a column's width is set by the
run of consecutive lines that have a cell in that column (a line with fewer cells ends the
run), and is at least `minwidth`. `get` uses minwidth 6 and padding 3, `describe` 0 and 2.
"""

from __future__ import annotations


def tabwrite(text: str, minwidth: int, padding: int) -> str:
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    _format(lines, 0, len(lines), [], minwidth, padding, out)
    return "\n".join(out)


def _format(lines: list[list[str]], line0: int, line1: int, widths: list[int], minwidth: int,
            padding: int, out: list[str]) -> None:  # fmt: skip
    column = len(widths)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        _write(lines, line0, this, widths, out)
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, len(lines[this][column]) + padding)
            this += 1
        _format(lines, line0, this, [*widths, width], minwidth, padding, out)
        line0 = this
    _write(lines, line0, line1, widths, out)


def _write(lines: list[list[str]], line0: int, line1: int, widths: list[int],
           out: list[str]) -> None:  # fmt: skip
    for cells in lines[line0:line1]:
        out.append(
            "".join(c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(cells))
        )
