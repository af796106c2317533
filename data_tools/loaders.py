"""Loading wafer-map data sets: MixedWM38 `.npz`, WM-811K `LSWMD.pkl`, image folders with a label CSV.

`WaferDataset` holds same-size maps as one array (what MixedWM38 files and the synthetic
generator produce); `LabelledWafer` is one map of any size with its labels (what WM-811K and
image folders give). Every loader checks what it reads and, on a wrong file, raises
`DataFormatError` saying what it expected and what it found. `save_mixedwm38` writes a
MixedWM38-layout file atomically (temp file, then rename).
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools import taxonomy
from data_tools.wafer_map import FAIL, OFF, WaferMap, WaferMapError

#: Maps validated per chunk when loading, to bound temporary memory.
CHUNK = 4096


class DataFormatError(ValueError):
    """A data file that is not in the expected format; the message says what was expected and found."""


# ---------------------------------------------------------------- data types


@dataclass
class WaferDataset:
    """Same-size wafer maps with optional multi-hot labels.

    grids: (N, H, W) uint8 codes 0 off wafer / 1 good / 2 failing.
    labels: (N, 8) int32 multi-hot in `taxonomy.PATTERN_KEYS` order, or None when unlabelled.
    index: (N,) int64 identifiers (positions in the original file).
    source: where the maps came from, e.g. a file path or ``synthetic(seed=0)``.
    """

    grids: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        grids = np.asarray(self.grids)
        if grids.ndim != 3:
            raise DataFormatError(f"grids must be (N, H, W); got shape {grids.shape}")
        n = grids.shape[0]
        if grids.dtype != np.uint8:
            grids = grids.astype(np.uint8)
        self.grids = grids
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n, taxonomy.NUM_PATTERNS):
                raise DataFormatError(
                    f"labels must be (N, {taxonomy.NUM_PATTERNS}) = ({n}, {taxonomy.NUM_PATTERNS}); got {labels.shape}"
                )
            self.labels = labels.astype(np.int32, copy=False)
        index = np.asarray(self.index)
        if index.shape != (n,):
            raise DataFormatError(f"index must be (N,) = ({n},); got {index.shape}")
        self.index = index.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.grids.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every map."""
        return int(self.grids.shape[1]), int(self.grids.shape[2])

    def wafer(self, i: int) -> WaferMap:
        return WaferMap(self.grids[i])

    def class_name(self, i: int) -> str | None:
        """`+`-joined class name of map i (``Normal`` for no pattern; None when unlabelled)."""
        if self.labels is None:
            return None
        return taxonomy.class_name(self.labels[i])

    def class_names(self) -> list[str]:
        """Class name of every map, in order; raises when the data set has no labels."""
        if self.labels is None:
            raise ValueError(f"{self.source or 'this data set'} has no labels, so it has no class names")
        rows, inverse = np.unique(self.labels, axis=0, return_inverse=True)
        names = [taxonomy.class_name(row) for row in rows]
        return [names[j] for j in np.asarray(inverse).reshape(-1)]

    def subset(self, selection: Sequence[int] | np.ndarray) -> WaferDataset:
        """The maps at `selection` (indices or a boolean mask), keeping their original index."""
        sel = np.asarray(selection)
        return WaferDataset(
            self.grids[sel], None if self.labels is None else self.labels[sel], self.index[sel], self.source
        )


@dataclass(frozen=True)
class LabelledWafer:
    """One wafer map of any size with its labels.

    labels: (8,) int32 multi-hot (all zeros = Normal), or None when the map is unlabelled.
    split: the split the source assigned (``train`` / ``test``), or None.
    meta: source-specific fields (WM-811K lot name, wafer index, die size, raw failure type…).
    """

    wafer: WaferMap
    labels: np.ndarray | None
    source: str
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str | None:
        return None if self.labels is None else taxonomy.class_name(self.labels)


def stack_records(records: Sequence[LabelledWafer], source: str = "") -> WaferDataset:
    """Same-size labelled maps as one `WaferDataset` (unlabelled maps get no labels array)."""
    if not records:
        raise DataFormatError("no maps to stack")
    shapes = {r.wafer.shape for r in records}
    if len(shapes) != 1:
        raise DataFormatError(f"maps must all have one size to stack; found {len(shapes)} sizes: {sorted(shapes)[:5]}")
    labelled = [r.labels is not None for r in records]
    if any(labelled) and not all(labelled):
        raise DataFormatError("cannot stack labelled with unlabelled maps; filter one kind out first")
    grids = np.stack([r.wafer.grid for r in records])
    labels = np.stack([r.labels for r in records]) if all(labelled) else None
    return WaferDataset(grids, labels, np.arange(len(records), dtype=np.int64), source)


# ---------------------------------------------------------------- MixedWM38 .npz


def _describe(path: Path) -> str:
    try:
        head = path.read_bytes()[:8] if path.stat().st_size < 1 << 16 else path.open("rb").read(8)
    except OSError as exc:
        return f"an unreadable file ({exc})"
    return f"a file starting with bytes {head!r}"


def load_mixedwm38(path: str | os.PathLike, limit: int | None = None) -> WaferDataset:
    """Load a MixedWM38 `.npz`: `arr_0` (N, H, W) die codes 0/1/2 and `arr_1` (N, 8) multi-hot labels.

    Accepts the Kaggle `Wafer_Map_Datasets.npz` as distributed (int32, uncompressed) and variants:
    uint8 or other integer grids, compressed archives, subsets and an optional `index` array
    (N,) of original positions. `limit` keeps only the first `limit` maps.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"expected a MixedWM38 .npz file at {path}, but there is no such file")
    if limit is not None and limit < 0:
        raise DataFormatError(f"limit must be ≥ 0, got {limit}")
    if not zipfile.is_zipfile(path):
        raise DataFormatError(
            f"expected a MixedWM38 .npz archive (a zip of arr_0 and arr_1) at {path}; found {_describe(path)}"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"could not read {path} as a .npz archive: {exc}") from exc
    with archive:
        missing = [k for k in ("arr_0", "arr_1") if k not in archive.files]
        if missing:
            raise DataFormatError(
                f"expected arrays arr_0 (maps) and arr_1 (labels) in {path}; missing {', '.join(missing)}, "
                f"found {', '.join(archive.files) or 'no arrays'}"
            )
        try:
            raw_grids, raw_labels = archive["arr_0"], archive["arr_1"]
            raw_index = archive["index"] if "index" in archive.files else None
        except ValueError as exc:  # object arrays need pickle, which we refuse
            raise DataFormatError(f"{path} holds object (pickled) arrays; expected plain integer arrays: {exc}") from exc
    return _validate_mixedwm38(raw_grids, raw_labels, raw_index, str(path), limit)


def _validate_mixedwm38(
    raw_grids: np.ndarray, raw_labels: np.ndarray, raw_index: np.ndarray | None, source: str, limit: int | None
) -> WaferDataset:
    if raw_grids.ndim != 3:
        raise DataFormatError(f"expected arr_0 in {source} to be (N, H, W) maps; found shape {raw_grids.shape}")
    if raw_grids.dtype.kind not in "iub":
        raise DataFormatError(f"expected integer die codes in arr_0 of {source}; found dtype {raw_grids.dtype}")
    n = raw_grids.shape[0]
    if raw_labels.ndim != 2 or raw_labels.shape[1] != taxonomy.NUM_PATTERNS:
        raise DataFormatError(
            f"expected arr_1 in {source} to be (N, {taxonomy.NUM_PATTERNS}) multi-hot labels "
            f"({', '.join(taxonomy.PATTERN_KEYS)}); found shape {raw_labels.shape}"
        )
    if raw_labels.shape[0] != n:
        raise DataFormatError(f"arr_0 has {n} maps but arr_1 has {raw_labels.shape[0]} labels in {source}")
    if raw_labels.dtype.kind not in "iub" or not np.isin(raw_labels, (0, 1)).all():
        raise DataFormatError(
            f"expected 0/1 labels in arr_1 of {source}; found dtype {raw_labels.dtype} with values "
            f"{np.unique(raw_labels)[:10].tolist()}"
        )
    if raw_index is not None and raw_index.shape != (n,):
        raise DataFormatError(f"expected index in {source} to be ({n},); found shape {raw_index.shape}")
    if raw_index is not None and raw_index.dtype.kind not in "iu":
        raise DataFormatError(f"expected integer index in {source}; found dtype {raw_index.dtype}")
    stop = n if limit is None else min(limit, n)
    grids = np.empty((stop, *raw_grids.shape[1:]), dtype=np.uint8)
    for start in range(0, stop, CHUNK):
        chunk = raw_grids[start : min(start + CHUNK, stop)]
        if chunk.size and (chunk.min() < OFF or chunk.max() > FAIL):
            bad = np.unique(chunk[(chunk < OFF) | (chunk > FAIL)])[:10].tolist()
            raise DataFormatError(
                f"expected die codes 0 (off wafer), 1 (good), 2 (failing) in arr_0 of {source}; "
                f"found {bad} among maps {start}…{start + len(chunk) - 1}"
            )
        grids[start : start + len(chunk)] = chunk
    labels = raw_labels[:stop].astype(np.int32)
    rows = np.unique(labels, axis=0)
    for row in rows:
        problems = taxonomy.violations(taxonomy.from_multi_hot(row))
        if problems:
            where = int(np.flatnonzero((labels == row).all(axis=1))[0])
            raise DataFormatError(f"label {row.tolist()} of map {where} in {source} is not a MixedWM38 class: "
                                  f"{'; '.join(problems)}")
    index = np.arange(stop, dtype=np.int64) if raw_index is None else raw_index[:stop].astype(np.int64)
    return WaferDataset(grids, labels, index, source)


def _atomic_write(path: Path, write: Any) -> None:
    """Call `write(file_object)` on a temp file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_mixedwm38(
    path: str | os.PathLike,
    grids: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray | None = None,
    compress: bool = False,
) -> Path:
    """Write maps in the MixedWM38 layout: `arr_0` int32 (N,H,W), `arr_1` int32 (N,8), `index` int64 (N,).

    The file appears complete or not at all (written to a temp file, then renamed).
    """
    grids, labels = np.asarray(grids), np.asarray(labels)
    n = grids.shape[0] if grids.ndim == 3 else -1
    raw_index = np.arange(max(n, 0), dtype=np.int64) if index is None else np.asarray(index)
    dataset = _validate_mixedwm38(grids, labels, raw_index, "the maps to save", None)
    path = Path(path)
    if path.suffix != ".npz":
        raise DataFormatError(f"a MixedWM38 file name ends in .npz; got {path.name}")
    arrays = {"arr_0": dataset.grids.astype(np.int32), "arr_1": dataset.labels.astype(np.int32),
              "index": dataset.index}
    _atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
    return path


# ---------------------------------------------------------------- WM-811K LSWMD.pkl

#: Module paths of old pandas/numpy pickles → where those names live now.
LEGACY_MODULES: dict[str, str] = {
    "pandas.indexes.base": "pandas.core.indexes.base",
    "pandas.indexes.range": "pandas.core.indexes.range",
    "pandas.indexes.numeric": "pandas.core.indexes.base",
    "pandas.indexes.multi": "pandas.core.indexes.multi",
    "pandas.indexes.frozen": "pandas.core.indexes.frozen",
    "pandas.indexes.category": "pandas.core.indexes.category",
    "pandas.indexes": "pandas.core.indexes",
    "pandas.core.indexes.numeric": "pandas.core.indexes.base",
    "pandas.tseries.index": "pandas.core.indexes.datetimes",
    "pandas.tseries.period": "pandas.core.indexes.period",
    "pandas.sparse.array": "pandas.core.arrays.sparse",
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "numpy.core._multiarray_umath": "numpy._core._multiarray_umath",
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
}
#: Old class names whose modern equivalent has another name.
LEGACY_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("pandas.core.indexes.base", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "UInt64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "Float64Index"): ("pandas.core.indexes.base", "Index"),
}


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler for Python 2-era pandas pickles: renamed modules and latin-1 byte strings."""

    def find_class(self, module: str, name: str) -> Any:
        module = LEGACY_MODULES.get(module, module)
        module, name = LEGACY_NAMES.get((module, name), (module, name))
        return super().find_class(module, name)


def read_legacy_pickle(path: str | os.PathLike) -> Any:
    """Unpickle an old (Python 2, pandas < 0.20) pickle such as WM-811K's `LSWMD.pkl`.

    Unpickling runs code named in the file: only load pickles from a source you trust.
    """
    with open(path, "rb") as handle:
        return _LegacyUnpickler(handle, encoding="latin1").load()


WM811K_COLUMNS = ("waferMap", "failureType")
WM811K_SPLITS = {"training": "train", "train": "train", "test": "test"}


def _scalar_text(value: Any) -> str | None:
    """'none' from [['none']], np.array([['none']]), b'none' or 'none'; None from [] / empty arrays / NaN."""
    while True:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value.decode("latin1")
        if isinstance(value, str):
            return value
        if isinstance(value, float) and np.isnan(value):
            return None
        if isinstance(value, (list, tuple, np.ndarray)):
            flat = np.asarray(value, dtype=object).reshape(-1)
            if flat.size == 0:
                return None
            value = flat[0]
            continue
        return str(value)


def _wm811k_labels(failure: str | None) -> np.ndarray | None:
    if failure is None or not failure.strip():
        return None
    if failure.strip().lower() == "none":
        return np.zeros(taxonomy.NUM_PATTERNS, dtype=np.int32)
    return taxonomy.to_multi_hot([failure])


def load_wm811k(
    path: str | os.PathLike, limit: int | None = None, labelled_only: bool = False
) -> list[LabelledWafer]:
    """Load WM-811K's `LSWMD.pkl` (an old pandas pickle) as labelled wafer maps of their own sizes.

    failureType [['none']] becomes Normal (all-zero labels), [] becomes unlabelled (labels None),
    other types map through the taxonomy aliases (Edge-Loc → Edge_Loc, Near-full → Near_Full).
    trianTestLabel (sic) [['Training']]/[['Test']] becomes split ``train``/``test``.
    `limit` stops after that many maps; `labelled_only` skips unlabelled maps.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"expected WM-811K's LSWMD.pkl at {path}, but there is no such file")
    try:
        frame = read_legacy_pickle(path)
    except (pickle.UnpicklingError, EOFError, ImportError, AttributeError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(
            f"expected a pandas pickle of WM-811K (LSWMD.pkl) at {path}; found {_describe(path)} "
            f"that does not unpickle: {type(exc).__name__}: {exc}"
        ) from exc
    columns = [str(c) for c in getattr(frame, "columns", [])]
    missing = [c for c in WM811K_COLUMNS if c not in columns]
    if missing:
        raise DataFormatError(
            f"expected a WM-811K table with columns {', '.join(WM811K_COLUMNS)} in {path}; "
            f"found {type(frame).__name__} with columns {columns or 'none'}"
        )
    split_column = next((c for c in ("trianTestLabel", "trainTestLabel") if c in columns), None)
    records: list[LabelledWafer] = []
    for position, row in enumerate(frame.itertuples(index=False)):
        if limit is not None and len(records) >= limit:
            break
        fields = row._asdict() if hasattr(row, "_asdict") else dict(zip(columns, row))
        failure = _scalar_text(fields.get("failureType"))
        try:
            labels = _wm811k_labels(failure)
        except ValueError as exc:
            raise DataFormatError(f"row {position} of {path}: failureType {failure!r} is not a known pattern") from exc
        if labelled_only and labels is None:
            continue
        try:
            wafer = WaferMap(np.asarray(fields["waferMap"]))
        except WaferMapError as exc:
            raise DataFormatError(f"row {position} of {path}: waferMap is not a die grid: {exc}") from exc
        split_text = _scalar_text(fields.get(split_column)) if split_column else None
        split = WM811K_SPLITS.get(split_text.strip().lower()) if split_text else None
        meta = {
            "row": position,
            "failure_type": failure,
            "lot": _scalar_text(fields.get("lotName")),
            "wafer_index": _number(fields.get("waferIndex")),
            "die_size": _number(fields.get("dieSize")),
        }
        records.append(LabelledWafer(wafer, labels, f"wm811k:{position}", split, meta))
    return records


def _number(value: Any) -> float | None:
    text = _scalar_text(value)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- image folder + CSV

FILE_COLUMNS = ("file", "filename", "file_name", "image", "path", "name")
CLASS_COLUMNS = ("class", "label", "labels", "class_name", "pattern", "patterns")


@dataclass(frozen=True)
class RowFailure:
    """A CSV row whose image could not be used, and why."""

    line: int  # 1-based line number in the CSV (the header is line 1)
    file: str
    reason: str


@dataclass
class ImageFolderResult:
    records: list[LabelledWafer]
    failures: list[RowFailure]

    def report(self) -> str:
        lines = [f"{len(self.records)} maps read, {len(self.failures)} rows failed"]
        lines += [f"  line {f.line} ({f.file}): {f.reason}" for f in self.failures]
        return "\n".join(lines)


def _row_labels(row: dict[str, str], class_column: str | None, pattern_columns: dict[str, str]) -> np.ndarray | None:
    if class_column is not None:
        text = (row.get(class_column) or "").strip()
        if not text:
            return None
        return taxonomy.parse_class_name(text).multi_hot
    keys = []
    for column, key in pattern_columns.items():
        value = (row.get(column) or "").strip().lower()
        if value in ("1", "1.0", "true", "yes", "y", "x"):
            keys.append(key)
        elif value not in ("0", "0.0", "false", "no", "n", ""):
            raise ValueError(f"column {column!r} must be 0/1, got {value!r}")
    return taxonomy.class_of(keys).multi_hot


def load_image_folder(
    folder: str | os.PathLike, labels_csv: str | os.PathLike, limit: int | None = None
) -> ImageFolderResult:
    """Read wafer-map images listed in a CSV, with their labels.

    The CSV has a file column (one of FILE_COLUMNS, relative to `folder`) and either a class column
    (``Center+Scratch``, ``C+EL``, ``Normal``…; empty = unlabelled) or one 0/1 column per pattern
    (headers are pattern names or aliases). Rows that fail (missing file, not a wafer map, bad
    label) are reported in `failures` with the reason; the other rows are read.
    """
    from data_tools import image_reader  # written alongside; imported lazily (pillow)

    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise DataFormatError(f"expected a folder of wafer-map images at {folder}; found no such folder")
    if not labels_csv.is_file():
        raise DataFormatError(f"expected a labels CSV at {labels_csv}; found no such file")
    text = labels_csv.read_text(encoding="utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    headers = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = headers
    lower = {h.lower(): h for h in headers}
    file_column = next((lower[c] for c in FILE_COLUMNS if c in lower), None)
    class_column = next((lower[c] for c in CLASS_COLUMNS if c in lower), None)
    pattern_columns: dict[str, str] = {}
    for header in headers:
        if header in (file_column, class_column):
            continue
        try:
            pattern_columns[header] = taxonomy.pattern_key(header)
        except ValueError:
            continue
    if file_column is None or (class_column is None and not pattern_columns):
        raise DataFormatError(
            f"expected {labels_csv} to have a file column ({'/'.join(FILE_COLUMNS)}) and a class column "
            f"({'/'.join(CLASS_COLUMNS)}) or 0/1 pattern columns ({', '.join(taxonomy.PATTERN_KEYS)}); "
            f"found columns {headers or 'none'}"
        )
    records: list[LabelledWafer] = []
    failures: list[RowFailure] = []
    root = folder.resolve()
    for line, row in enumerate(reader, start=2):
        if limit is not None and len(records) >= limit:
            break
        name = (row.get(file_column) or "").strip()
        if not name:
            failures.append(RowFailure(line, name, f"empty {file_column!r} cell"))
            continue
        image_path = (folder / name).resolve()
        if root not in image_path.parents:
            failures.append(RowFailure(line, name, "path points outside the image folder"))
            continue
        if not image_path.is_file():
            failures.append(RowFailure(line, name, f"no such file in {folder}"))
            continue
        try:
            labels = _row_labels(row, class_column, pattern_columns)
        except ValueError as exc:
            failures.append(RowFailure(line, name, f"bad label: {exc}"))
            continue
        try:
            wafer = image_reader.read_wafer_image(image_path)
        except image_reader.NotAWaferMapError as exc:
            failures.append(RowFailure(line, name, f"not a wafer map: {exc}"))
            continue
        except (OSError, ValueError) as exc:
            failures.append(RowFailure(line, name, f"unreadable image: {exc}"))
            continue
        records.append(LabelledWafer(wafer, labels, f"image:{name}", None, {"line": line}))
    return ImageFolderResult(records, failures)


def records_by_class(records: Iterable[LabelledWafer]) -> dict[str, int]:
    """How many records of each class (``unlabelled`` for maps without labels)."""
    counts: dict[str, int] = {}
    for record in records:
        key = record.class_name or "unlabelled"
        counts[key] = counts.get(key, 0) + 1
    return counts
