"""Low-level readers shared by the loaders.

Every reader has a fast, vectorised path (pandas / NumPy) and, only when that
fails, a slow line-by-line scan whose sole job is to find the first offending
line so that the :class:`DataError` names the file, the 1-based line and the
field. Line numbers count every physical line of the file, header included.
"""
from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import math
import pathlib
import sys
import warnings
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data.types import DataError

GZIP_MAGIC = b"\x1f\x8b"
LINE = "_line"  # column of 1-based line numbers added by the readers

# Field kinds understood by read_delimited:
#   "int"   integer (ids, unix seconds)
#   "float" finite number (ratings)
#   "str"   non-empty text (string ids, dates parsed later)
#   "text"  optional text (may be empty)
FIELD_KINDS = ("int", "float", "str", "text")


def report(message: str) -> None:
    """Tell the user about a data change (dropped duplicates, ...): never silent."""
    print(f"[iarn_jax.data] {message}", file=sys.stderr, flush=True)


def read_bytes(path: pathlib.Path | str) -> bytes:
    """Whole file as bytes; gzip streams (by magic bytes, not extension) are decompressed."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({error})") from None
    return data


def strip_trailing_newlines(data: bytes) -> bytes:
    """Drop trailing line breaks (never changes the number of any earlier line)."""
    return data.rstrip(b"\r\n")


def decode(data: bytes, path: str, encoding: str = "utf-8") -> str:
    """Decode bytes; a decoding failure names the line that holds the bad byte."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}: line {line}: not valid {encoding} text ({error.reason})") from None


def decode_utf8_or_latin1(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 (older MovieLens files)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_lines(text: str) -> list[str]:
    """Physical lines (``\\n`` or ``\\r\\n``), no other separators (unlike str.splitlines)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def value_problem(kind: str, value: Optional[str]) -> Optional[str]:
    """Why ``value`` is not a valid ``kind`` field, or None when it is valid."""
    if kind == "text":
        return None
    if value is None or value.strip() == "":
        return "missing value"
    if kind == "str":
        return None
    if kind == "int":
        try:
            number = int(value)
        except ValueError:
            return f"not an integer: {value!r}"
        if not -(2**63) <= number < 2**63:
            return f"integer out of the 64-bit range: {value.strip()!r}"
        return None
    try:
        number = float(value)
    except ValueError:
        return f"not a number: {value!r}"
    if not math.isfinite(number):
        return f"not a finite number: {value!r}"
    return None


def _header_columns(text_first_line: str, sep: str) -> list[str]:
    """Column names of a header line (stripped; a UTF-8 byte-order mark is ignored)."""
    text_first_line = text_first_line.lstrip("\ufeff")
    cells = next(csv.reader([text_first_line], delimiter=sep)) if text_first_line else []
    return [cell.strip() for cell in cells]


def locate_bad_line(
    text: str,
    path: str,
    fields: Sequence[tuple[str, str]],
    *,
    sep: str,
    header: bool,
    quoted: bool,
) -> Optional[DataError]:
    """Slow path: the first line with a wrong field count or a bad value, as a DataError."""
    lines = split_lines(text)
    if quoted:
        rows = csv.reader(lines, delimiter=sep)
    else:
        rows = (line.split(sep) for line in lines)
    names = [name for name, _ in fields]
    positions = list(range(len(fields)))
    expected = len(fields)
    for number, row in enumerate(rows, start=1):
        if header and number == 1:
            columns = _header_columns(lines[0], sep)
            positions = [columns.index(name) for name in names]
            expected = len(columns)
            continue
        if not row or (len(row) == 1 and row[0].strip() == "" and expected > 1):
            return DataError(f"{path}: line {number}: field '{names[0]}': empty line")
        if len(row) < expected:
            missing = _first_missing(names, positions, len(row))
            return DataError(
                f"{path}: line {number}: field '{missing}': expected {expected} fields, found {len(row)}"
            )
        if len(row) > expected:
            return DataError(
                f"{path}: line {number}: field {expected + 1} (after '{names[-1]}'): "
                f"expected {expected} fields, found {len(row)}"
            )
        for (name, kind), position in zip(fields, positions):
            problem = value_problem(kind, row[position])
            if problem:
                return DataError(f"{path}: line {number}: field '{name}': {problem}")
    return None


def _first_missing(names: Sequence[str], positions: Sequence[int], n_found: int) -> str:
    for name, position in sorted(zip(names, positions), key=lambda pair: pair[1]):
        if position >= n_found:
            return name
    return names[-1]


_PANDAS_DTYPES = {"int": "int64", "float": "float64", "str": str, "text": str}


def read_delimited(
    data: bytes,
    path: str,
    fields: Sequence[tuple[str, str]],
    *,
    sep: str = ",",
    header: bool = False,
    encoding: str = "utf-8",
    quoted: bool = False,
) -> pd.DataFrame:
    """Parse a delimited text table into a DataFrame, validated field by field.

    fields: (name, kind) pairs. Without a header they are the columns in order;
      with a header they are looked up by name (other columns are ignored, but
      every line must have as many fields as the header).
    Returns one column per field (named as the field) plus ``_line``: the
    1-based line number of each row (exact unless a quoted field spans lines).
    Raises DataError on any bad line.
    """
    if any(name == LINE for name, _ in fields):
        raise ValueError(f"the column name {LINE!r} is reserved for line numbers")
    data = strip_trailing_newlines(data)
    n_header = 1 if header else 0
    if not data.strip():
        raise DataError(f"{path}: line 1: field '{fields[0][0]}': empty file (no data)")
    text_head = decode(data[: data.find(b"\n") if b"\n" in data else len(data)], path, encoding)
    if header:
        columns = _header_columns(text_head.rstrip("\r"), sep)
        for name, _ in fields:
            if name not in columns:
                raise DataError(
                    f"{path}: line 1 (header): missing column '{name}' (found: {', '.join(columns)})"
                )
        if b"\n" not in data:
            raise DataError(f"{path}: line 2: field '{fields[0][0]}': no data rows after the header")
    names = [name for name, _ in fields]
    dtypes = {name: _PANDAS_DTYPES[kind] for name, kind in fields}
    try:
        with warnings.catch_warnings():  # a row longer than the header: an error, not a silent truncation
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(data),
                sep=sep,
                header=0 if header else None,
                names=None if header else names,
                index_col=False,
                dtype=dtypes,
                encoding=encoding,
                quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=False,
                engine="c",
            )
        frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
        frame = frame[names]
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning,
            UnicodeDecodeError) as error:
        text = decode(data, path, encoding)
        located = locate_bad_line(text, path, fields, sep=sep, header=header, quoted=quoted)
        raise (located or DataError(f"{path}: cannot parse ({error})")) from None
    _check_parsed(frame, fields, path, n_header)
    frame[LINE] = np.arange(n_header + 1, n_header + 1 + len(frame), dtype=np.int64)
    return frame.reset_index(drop=True)


def _check_parsed(frame: pd.DataFrame, fields, path: str, n_header: int) -> None:
    """Missing values and non-finite numbers left after a successful fast parse."""
    for name, kind in fields:
        if kind == "text":
            continue
        column = frame[name]
        if kind == "float":
            bad = ~np.isfinite(column.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            bad = column.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            value = column.iloc[row]
            problem = "missing value" if pd.isna(value) else f"not a finite number: {value!r}"
            raise DataError(f"{path}: line {row + n_header + 1}: field '{name}': {problem}")


def dates_to_unix_seconds(
    values: pd.Series | np.ndarray,
    lines: np.ndarray,
    path: str,
    field: str,
    time_format: str,
) -> np.ndarray:
    """Parse date strings (UTC) to int64 unix seconds; each distinct string is parsed once."""
    values = np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = pd.to_datetime(pd.Series(uniques), format=time_format, errors="coerce", utc=True)
    bad_unique = parsed.isna().to_numpy()
    bad_rows = (codes < 0) | bad_unique[np.maximum(codes, 0)]
    if bad_rows.any():
        row = int(np.argmax(bad_rows))
        raise DataError(
            f"{path}: line {int(lines[row])}: field '{field}': cannot parse time "
            f"{values[row]!r} with format {time_format!r}"
        )
    seconds = datetime_to_unix_seconds(parsed)
    return seconds[codes]


def datetime_to_unix_seconds(values: pd.Series) -> np.ndarray:
    """int64 unix seconds (floored) of a datetime Series, tz-aware (any zone) or naive (UTC)."""
    series = pd.Series(values, copy=False)
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy().astype("datetime64[s]").astype(np.int64)


_TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


def parse_time(value: str | int) -> int:
    """Unix seconds (UTC) of ``value``: an int (string), or "YYYY-MM-DD[ HH:MM[:SS]]".

    Used for ``--cut`` flags. A trailing "Z" and a "T" separator are accepted.
    Raises ValueError for anything else.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        pass
    else:
        if not -(2**63) <= number < 2**63:
            raise ValueError(f"time {value!r} is out of the 64-bit range of unix seconds")
        return number
    text = text[:-1] if text.endswith("Z") else text
    for time_format in _TIME_FORMATS:
        try:
            moment = _dt.datetime.strptime(text, time_format)
        except ValueError:
            continue
        return int(moment.replace(tzinfo=_dt.timezone.utc).timestamp())
    raise ValueError(
        f"cannot parse time {value!r}: use unix seconds or 'YYYY-MM-DD[ HH:MM[:SS]]' (UTC)"
    )
