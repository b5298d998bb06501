"""``csv``: a table with a header row and a label column.

The delimiter is guessed by trying each candidate (``csv.Sniffer``'s regex takes minutes on some inputs).
"""

from __future__ import annotations

import csv
import re
from typing import Any

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


def _read_table(path: Any, where: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, their line numbers) of a CSV file, blank lines skipped, every row as long as the header."""
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs put before the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(_CSV_SAMPLE_CHARS)
            f.seek(0)
            reader = csv.reader(f, delimiter=_guess_delimiter(sample, complete=len(sample) < _CSV_SAMPLE_CHARS))
            header = next(reader, None)
            if not header:
                raise DataError(f"{where} is empty; it needs a header row and one row per example.")
            rows, lines = [], []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(f"{where}: line {reader.line_num} has {len(row)} fields but the header has "
                                    f"{len(header)}; fix that row.")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DataError(f"{where} is not valid CSV ({exc}); fix the quoting.") from None
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc}).") from None
    return [h.strip() for h in header], rows, lines


def read_feature_rows(path: Any, n_features: int, columns: list[str] | None, label_column: str | None) -> np.ndarray:
    """The rows of a CSV file as float64 (N, n_features) features, for ``predict``: one example per row.

    ``columns``: the training columns (a run's model.json), read by name in that order, the label column
    (``label_column``) left out when the file has it; any other column is refused, in one line naming the
    expected ones. Without names (a run of unnamed columns), every column but the label column, in order,
    must make n_features.
    """
    where = f"input file '{path}'"
    header, rows, lines = _read_table(path, where)
    if len(set(header)) != len(header):
        twice = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{where} names column '{_shown(twice)}' twice; give every column its own name.")
    keep = [h for h in header if h != label_column]
    if columns is not None:
        missing = [c for c in columns if c not in header]
        extra = [h for h in keep if h not in columns]
        if missing or extra:
            what = (f"lacks the training column(s) {shown_names(missing)}" if missing else "") + \
                (" and " if missing and extra else "") + \
                (f"has column(s) the run was not trained on: {shown_names(extra)}" if extra else "")
            raise DataError(f"{where} {what}; the run reads the columns {shown_names(columns)} (in any order; "
                            f"the label column '{label_column}' may be present and is ignored).")
        keep = list(columns)
    elif len(keep) != n_features:
        raise DataError(f"{where} has {len(keep)} feature column(s) ({shown_names(keep)}) but the run takes "
                        f"{n_features}; give the training columns (a label column '{label_column}' is ignored).")
    if not rows:
        raise DataError(f"{where} has a header but no data rows; add one row per example.")
    at = [header.index(c) for c in keep]
    picked = [[row[i] for i in at] for row in rows]
    try:
        return np.array(picked, dtype=np.float64)
    except ValueError:
        return np.array([_parse_row(row, keep, where, line) for row, line in zip(picked, lines)], dtype=np.float64)


@DATASETS.register("csv", needs_path=True, kind="tabular")
def load_csv(cfg: DataConfig) -> ArrayData:
    """A CSV file with a header row: numeric feature columns and one label column (data.label_column)."""
    path = _need_path(cfg, "csv", "file")
    where = f"csv file '{path}'"
    header, rows, lines = _read_table(path, where)
    label_at = _label_index(header, cfg.label_column, where)
    labels = [row[label_at].strip() for row in rows]
    features = [row[:label_at] + row[label_at + 1 :] for row in rows]
    columns = [h for i, h in enumerate(header) if i != label_at]
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
        x=x, y=y, x_test=None, y_test=None, classes=classes, description=f"csv: {len(columns)} features from {path}",
        columns=columns,
    )
