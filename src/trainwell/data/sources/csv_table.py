"""``csv``: a table with a header row and a label column.

The delimiter is guessed by trying each candidate (``csv.Sniffer``'s regex takes minutes on some inputs).
"""

from __future__ import annotations

import csv
import re

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import ConfigError, DataError
from trainwell.data.sources.base import (
    ArrayData,
    check_float32_range,
    DATASETS,
    _encode_labels,
    _need_path,
    _shown,
    shown_names,
)


def _label_index(header: list[str], label_column: str, where: str) -> int:
    names = [h.strip() for h in header]
    if label_column in names:
        return names.index(label_column)
    text = str(label_column).strip()
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if -len(names) <= i < len(names):
            return i % len(names)
        raise ConfigError(f"data.label_column={i} is out of range: {where} has {len(names)} columns (0..{len(names) - 1}).")
    raise ConfigError(
        f"data.label_column '{label_column}' is not a column of {where} (columns: {shown_names(names)}); "
        "give its name or 0-based index."
    )


def _parse_row(row: list[str], columns: list[str], where: str, line: int) -> list[float]:
    """Cells as floats; a DataError naming the first cell that is not a number."""
    values = []
    for col, cell in zip(columns, row):
        try:
            values.append(float(cell))
        except ValueError:
            raise DataError(
                f"{where}: column '{_shown(col)}' at line {line} holds '{_shown(cell.strip())}', not a number; "
                "features must be numeric (encode categories as numbers, or drop the column)."
            ) from None
    return values


_CSV_DELIMITERS = ",;\t|"
_CSV_SAMPLE_CHARS = 65536
_CSV_SAMPLE_LINES = 20


def _guess_delimiter(sample: str, complete: bool) -> str:
    """The delimiter among ``, ; tab |`` that splits the sample's first lines into equal rows, most fields first.

    Rows of one length beat ragged ones, then more header fields win; ``,`` when no candidate
    splits the header. ``complete`` says the sample is the whole file (else its last line may
    be cut and is left out). csv.Sniffer is not used: its regular expressions take minutes on
    64 KB of hostile text (quotes and delimiters repeated), this takes one csv pass per candidate.
    """
    lines = sample.splitlines(keepends=True)
    lines = lines[:_CSV_SAMPLE_LINES] if complete or len(lines) > _CSV_SAMPLE_LINES else lines[:-1] or lines
    best, best_score = ",", (False, 1)
    for delimiter in _CSV_DELIMITERS:
        try:
            rows = [row for row in csv.reader(lines, delimiter=delimiter) if row]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        score = (len({len(row) for row in rows}) == 1, len(rows[0]))
        if score > best_score:
            best, best_score = delimiter, score
    return best


@DATASETS.register("csv", needs_path=True, kind="tabular")
def load_csv(cfg: DataConfig) -> ArrayData:
    """A CSV file with a header row: numeric feature columns and one label column (data.label_column)."""
    path = _need_path(cfg, "csv", "file")
    where = f"csv file '{path}'"
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs put before the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(_CSV_SAMPLE_CHARS)
            f.seek(0)
            reader = csv.reader(f, delimiter=_guess_delimiter(sample, complete=len(sample) < _CSV_SAMPLE_CHARS))
            header = next(reader, None)
            if not header:
                raise DataError(f"{where} is empty; it needs a header row and one row per example.")
            label_at = _label_index(header, cfg.label_column, where)
            features: list[list[str]] = []
            labels: list[str] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{where}: line {reader.line_num} has {len(row)} fields but the header has {len(header)}; fix that row."
                    )
                labels.append(row[label_at].strip())
                features.append(row[:label_at] + row[label_at + 1 :])
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DataError(f"{where} is not valid CSV ({exc}); fix the quoting.") from None
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc}).") from None
    columns = [h.strip() for i, h in enumerate(header) if i != label_at]
    if not features:
        raise DataError(f"{where} has a header but no data rows; add one row per example.")
    if not columns:
        raise DataError(f"{where} has only the label column; add feature columns.")
    try:
        x = np.array(features, dtype=np.float64)  # fast path: numpy parses every cell at once
    except ValueError:
        x = np.array([_parse_row(row, columns, where, line) for row, line in zip(features, lines)], dtype=np.float64)
    # Parsed as float64 first: a value beyond float32's range would otherwise silently become inf.
    check_float32_range(x, where)
    x = x.astype(np.float32)
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise DataError(f"{where}: line {lines[empty[0]]} has an empty label; give every row a label.")
    y, classes = _encode_labels(labels, where)
    return ArrayData(
        x=x, y=y, x_test=None, y_test=None, classes=classes, description=f"csv: {len(columns)} features from {path}"
    )
