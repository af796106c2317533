"""Loaders: MixedWM38 .npz (and its variants, and wrong files), WM-811K legacy pickles, image folders + CSV."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest

from data_tools.layout import mixedwm38_layout
from data_tools.loaders import (
    DataFormatError,
    LabelledWafer,
    WaferDataset,
    load_image_folder,
    load_mixedwm38,
    load_wm811k,
    save_mixedwm38,
    stack_records,
)
from data_tools.render import render, save_image
from data_tools.taxonomy import CLASS_NAMES, to_multi_hot
from data_tools.wafer_map import WaferMap


def _maps(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    layout = mixedwm38_layout()
    grids = np.where(layout, 1, 0)[None].repeat(n, axis=0).astype(np.int32)
    grids[(rng.random(grids.shape) < 0.1) & layout] = 2
    names = [["Center"], [], ["Edge_Ring", "Scratch"], ["Donut", "Loc"], ["Random"], ["Edge-Loc"]]
    labels = np.stack([to_multi_hot(names[i % len(names)]) for i in range(n)]).astype(np.int32)
    return grids, labels


# ---------------------------------------------------------------- MixedWM38 .npz


def test_kaggle_layout_round_trip(tmp_path):
    grids, labels = _maps()
    path = tmp_path / "Wafer_Map_Datasets.npz"
    np.savez(path, grids, labels)  # as distributed: arr_0/arr_1, int32, uncompressed, no index
    data = load_mixedwm38(path)
    assert len(data) == 6 and data.shape == (52, 52)
    assert data.grids.dtype == np.uint8 and data.labels.dtype == np.int32
    assert np.array_equal(data.grids, grids) and np.array_equal(data.labels, labels)
    assert data.index.tolist() == list(range(6))
    assert data.class_names() == ["Center", "Normal", "Edge_Ring+Scratch", "Donut+Loc", "Random", "Edge_Loc"]
    assert data.class_name(2) == "Edge_Ring+Scratch"
    assert isinstance(data.wafer(0), WaferMap) and data.wafer(0).dies == 2061
    assert data.source == str(path)


def test_variants_uint8_compressed_subset_with_index(tmp_path):
    grids, labels = _maps(8)
    path = tmp_path / "subset.npz"
    np.savez_compressed(path, arr_0=grids[::2].astype(np.uint8), arr_1=labels[::2],
                        index=np.array([0, 2, 4, 6]), extra=np.zeros(3))
    data = load_mixedwm38(path)
    assert data.index.tolist() == [0, 2, 4, 6] and data.index.dtype == np.int64
    assert np.array_equal(data.grids, grids[::2])
    assert len(load_mixedwm38(path, limit=3)) == 3


def test_save_writes_the_mixedwm38_layout(tmp_path):
    grids, labels = _maps()
    path = save_mixedwm38(tmp_path / "out" / "maps.npz", grids.astype(np.uint8), labels, index=np.arange(10, 16))
    with np.load(path) as archive:
        assert set(archive.files) == {"arr_0", "arr_1", "index"}
        assert archive["arr_0"].dtype == np.int32 and archive["arr_1"].dtype == np.int32
        assert archive["index"].tolist() == list(range(10, 16))
    assert zipfile.ZipFile(path).testzip() is None
    assert [p.name for p in path.parent.iterdir()] == ["maps.npz"]  # no temp files left


def test_a_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path):
    grids, labels = _maps()
    path = tmp_path / "maps.npz"
    save_mixedwm38(path, grids, labels)
    before = path.read_bytes()
    bad = grids.copy()
    bad[0, 10, 10] = 7
    with pytest.raises(DataFormatError, match=r"die codes 0 .* found \[7\]"):
        save_mixedwm38(path, bad, labels)
    assert path.read_bytes() == before
    with pytest.raises(DataFormatError, match=r"ends in \.npz"):
        save_mixedwm38(tmp_path / "maps.txt", grids, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"arr_0": "grids"}, r"missing arr_1, found arr_0"),
        ({"maps": "grids", "labels": "labels"}, r"missing arr_0, arr_1, found maps, labels"),
        ({"arr_0": "grids2d", "arr_1": "labels"}, r"\(N, H, W\) maps; found shape \(6, 2704\)"),
        ({"arr_0": "grids", "arr_1": "labels9"}, r"\(N, 8\) multi-hot labels .*; found shape \(6, 9\)"),
        ({"arr_0": "grids", "arr_1": "labels5"}, r"arr_0 has 6 maps but arr_1 has 5 labels"),
        ({"arr_0": "grids3", "arr_1": "labels"}, r"die codes 0 \(off wafer\), 1 \(good\), 2 \(failing\).* found \[3\]"),
        ({"arr_0": "gridsf", "arr_1": "labels"}, r"integer die codes .* found dtype float64"),
        ({"arr_0": "grids", "arr_1": "labels2"}, r"0/1 labels .* values \[0, 2\]"),
        ({"arr_0": "grids", "arr_1": "center_donut"}, r"not a MixedWM38 class: Center and Donut never occur together"),
        ({"arr_0": "grids", "arr_1": "labels", "index": "index3"}, r"index .* to be \(6,\); found shape \(3,\)"),
    ],
)
def test_wrong_npz_contents_say_what_was_expected_and_found(tmp_path, arrays, message):
    grids, labels = _maps()
    pool = {
        "grids": grids, "labels": labels, "grids2d": grids.reshape(6, -1), "labels9": np.zeros((6, 9), np.int32),
        "labels5": labels[:5], "gridsf": grids.astype(np.float64), "index3": np.arange(3),
        "grids3": np.where(grids == 2, 3, grids), "labels2": labels * 2,
        "center_donut": np.tile(to_multi_hot(["Center", "Donut"]), (6, 1)),
    }
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: pool[v] for k, v in arrays.items()})
    with pytest.raises(DataFormatError, match=message):
        load_mixedwm38(path)


def test_files_that_are_not_npz_archives(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_mixedwm38(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(DataFormatError, match=r"expected a MixedWM38 .npz archive .* found a file starting with bytes b'hello'"):
        load_mixedwm38(text)
    npy = tmp_path / "maps.npy"
    np.save(npy, np.zeros((2, 3, 3), np.int32))
    with pytest.raises(DataFormatError, match=r"found a file starting with bytes b'\\x93NUMPY"):
        load_mixedwm38(npy)


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    arr = np.empty(6, dtype=object)
    arr[:] = [np.zeros((3, 3))] * 6
    np.savez(path, arr_0=arr, arr_1=_maps()[1])
    with pytest.raises(DataFormatError, match="object"):
        load_mixedwm38(path)


def test_dataset_subset_and_stack():
    grids, labels = _maps()
    data = WaferDataset(grids, labels, np.arange(6), "test")
    part = data.subset([1, 3])
    assert len(part) == 2 and part.index.tolist() == [1, 3] and part.class_names() == ["Normal", "Donut+Loc"]
    unlabelled = WaferDataset(grids, None, np.arange(6))
    assert unlabelled.class_name(0) is None
    with pytest.raises(ValueError, match="no labels"):
        unlabelled.class_names()
    with pytest.raises(DataFormatError, match=r"labels must be \(N, 8\)"):
        WaferDataset(grids, labels[:, :7], np.arange(6))
    records = [LabelledWafer(data.wafer(i), labels[i], f"x:{i}") for i in range(3)]
    stacked = stack_records(records)
    assert np.array_equal(stacked.grids, grids[:3]) and np.array_equal(stacked.labels, labels[:3])
    other = LabelledWafer(WaferMap(np.ones((5, 5), np.uint8)), None, "y")
    with pytest.raises(DataFormatError, match="one size"):
        stack_records([*records, other])


def test_real_mixedwm38_loads(real_mixedwm38):
    data = load_mixedwm38(real_mixedwm38)
    assert data.shape == (52, 52) and len(data) > 30_000
    assert set(np.unique(data.grids[:500])) <= {0, 1, 2}
    assert set(data.class_names()) == set(CLASS_NAMES)
    assert np.all(np.diff(data.index) > 0)


# ---------------------------------------------------------------- WM-811K legacy pickle


class _Py2Pickle:
    """Writes protocol-2 opcodes the way Python 2 with pandas 0.19 did: byte strings as py2 `str`
    (BINSTRING), numpy arrays through numpy.core.multiarray._reconstruct with raw data strings,
    and pandas indexes under their old module path ``pandas.indexes.base``."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def py2str(self, data: bytes) -> None:
        self.out += (b"U" + bytes([len(data)]) + data) if len(data) < 256 else (b"T" + struct.pack("<i", len(data)) + data)

    def value(self, v) -> None:
        if v is None:
            self.out += b"N"
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            self.out += b"J" + struct.pack("<i", v)
        elif isinstance(v, float):
            self.out += b"G" + struct.pack(">d", v)
        elif isinstance(v, bytes):
            self.py2str(v)
        elif isinstance(v, tuple):
            self.out += b"("
            for item in v:
                self.value(item)
            self.out += b"t"
        elif isinstance(v, list):
            self.out += b"]("
            for item in v:
                self.value(item)
            self.out += b"e"
        elif isinstance(v, dict):
            self.out += b"}("
            for key, item in v.items():
                self.value(key)
                self.value(item)
            self.out += b"u"
        elif isinstance(v, np.ndarray):
            self.array(v)
        elif callable(v):
            v(self)
        else:
            raise TypeError(type(v))

    def dtype(self, dt: np.dtype) -> None:
        self.glob("numpy", "dtype")
        self.value((dt.str[1:].encode(), 0, 1))
        self.out += b"R"
        order = b"|" if dt.itemsize == 1 or dt.kind == "S" else b"<"
        self.value((3, order, None, None, None, dt.itemsize if dt.kind == "S" else -1, 1 if dt.kind == "S" else -1, 0))
        self.out += b"b"

    def array(self, a: np.ndarray) -> None:
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.value((0,))
        self.value(b"b")
        self.out += b"\x87R("
        self.value(1)
        self.value(tuple(a.shape))
        self.dtype(a.dtype)
        self.value(False)
        self.py2str(np.ascontiguousarray(a).tobytes())
        self.out += b"tb"

    def dataframe(self, columns: dict[bytes, list], index: np.ndarray) -> bytes:
        def legacy_index(p: _Py2Pickle) -> None:
            p.glob("pandas.indexes.base", "_new_Index")
            p.glob("pandas.indexes.base", "Index")
            p.value({b"data": index, b"name": None})
            p.out += b"\x86R"

        self.glob("pandas.core.frame", "DataFrame")
        self.value((columns, legacy_index))
        self.out += b"R."
        return bytes(self.out)


def _lswmd_pickle() -> bytes:
    rng = np.random.default_rng(3)

    def wafer(rows: int, cols: int) -> np.ndarray:
        y, x = np.indices((rows, cols))
        on = ((y - (rows - 1) / 2) / (rows / 2)) ** 2 + ((x - (cols - 1) / 2) / (cols / 2)) ** 2 <= 1
        return np.where(on, np.where(rng.random((rows, cols)) < 0.2, 2, 1), 0).astype(np.uint8)

    s = np.array
    columns = {
        b"waferMap": [wafer(26, 26), wafer(30, 34), wafer(45, 48), wafer(26, 26), wafer(15, 20)],
        b"dieSize": [1683.0, 1201.0, 533.0, 1683.0, 2460.0],
        b"lotName": [b"lot1", b"lot1", b"lot\xe9", b"lot2", b"lot3"],  # a latin-1 byte, as py2 str
        b"waferIndex": [1.0, 2.0, 25.0, 3.0, 4.0],
        b"trianTestLabel": [s([[b"Training"]]), s([[b"Test"]]), np.zeros((0, 0)), s([[b"Training"]]),
                            s([[b"Test"]])],
        b"failureType": [s([[b"none"]]), s([[b"Edge-Ring"]]), np.zeros((0, 0)), s([[b"Near-full"]]),
                         s([[b"Edge-Loc"]])],
    }
    index = np.array([0, 1, 200, 1000, 811456], dtype=np.int64)  # 200 → a byte ≥ 0x80 in the raw data
    return _Py2Pickle().dataframe(columns, index)


@pytest.fixture()
def lswmd(tmp_path):
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(_lswmd_pickle())
    return path


def test_the_fixture_is_a_legacy_pickle(lswmd):
    """Plain unpickling fails on the py2 byte strings, latin-1 alone fails on the old module path,
    and renaming alone fails on the byte strings again: the loader needs both."""
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(lswmd.read_bytes())
    with pytest.raises(ModuleNotFoundError, match=r"pandas\.indexes"):
        pickle.loads(lswmd.read_bytes(), encoding="latin1")

    class RenameOnly(pickle.Unpickler):
        def find_class(self, module, name):
            return super().find_class(module.replace("pandas.indexes", "pandas.core.indexes"), name)

    with lswmd.open("rb") as handle, pytest.raises(UnicodeDecodeError):
        RenameOnly(handle).load()


def test_load_wm811k_legacy_pickle(lswmd):
    records = load_wm811k(lswmd)
    assert [r.wafer.shape for r in records] == [(26, 26), (30, 34), (45, 48), (26, 26), (15, 20)]
    assert [r.class_name for r in records] == ["Normal", "Edge_Ring", None, "Near_Full", "Edge_Loc"]
    assert [r.split for r in records] == ["train", "test", None, "train", "test"]
    assert records[0].labels.tolist() == [0] * 8
    assert records[2].labels is None
    assert records[2].meta["lot"] == "loté"
    assert records[2].meta["wafer_index"] == 25.0 and records[2].meta["die_size"] == 533.0
    assert records[1].meta["failure_type"] == "Edge-Ring"
    assert records[4].source == "wm811k:4"
    assert all(isinstance(r.wafer, WaferMap) for r in records)


def test_load_wm811k_filters_and_limits(lswmd):
    assert [r.class_name for r in load_wm811k(lswmd, labelled_only=True)] == [
        "Normal", "Edge_Ring", "Near_Full", "Edge_Loc"]
    assert len(load_wm811k(lswmd, limit=2)) == 2


def test_load_wm811k_wrong_files(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_wm811k(tmp_path / "LSWMD.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(DataFormatError, match=r"expected a pandas pickle of WM-811K .* does not unpickle"):
        load_wm811k(junk)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataFormatError, match=r"columns waferMap, failureType .* found dict with columns none"):
        load_wm811k(other)


# ---------------------------------------------------------------- image folder + CSV


def _image_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    grids = []
    for i in range(3):
        grid = np.where(mixedwm38_layout(), 1, 0).astype(np.uint8)
        grid[(rng.random(grid.shape) < 0.15) & mixedwm38_layout()] = 2
        grids.append(grid)
        save_image(render(grid, scale=4), folder / f"w{i}.png")
    from PIL import Image

    Image.new("RGB", (64, 48), (30, 120, 200)).save(folder / "photo.png")  # a plain blue picture
    return folder, grids


def test_load_image_folder_with_class_column(tmp_path):
    folder, grids = _image_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,class\n"
        "w0.png,Center+Scratch\n"
        "w1.png,Normal\n"
        "missing.png,Loc\n"
        "photo.png,Donut\n"
        "w2.png,Center+Donut\n"
        "../labels.csv,Loc\n"
        "w2.png,\n"
    )
    result = load_image_folder(folder, csv_path)
    assert [r.class_name for r in result.records] == ["Center+Scratch", "Normal", None]
    assert np.array_equal(result.records[0].wafer.grid, grids[0])
    assert result.records[0].source == "image:w0.png"
    reasons = {f.line: f.reason for f in result.failures}
    assert set(reasons) == {4, 5, 6, 7}
    assert "no such file" in reasons[4]
    assert reasons[5].startswith("not a wafer map")
    assert "never occur together" in reasons[6]
    assert "outside the image folder" in reasons[7]
    assert "3 maps read, 4 rows failed" in result.report()


def test_load_image_folder_with_pattern_columns(tmp_path):
    folder, _ = _image_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("Image,Center,Edge-Loc,Scratch,Random\nw0.png,1,1,0,0\nw1.png,0,0,0,0\nw2.png,0,yes,2,0\n")
    result = load_image_folder(folder, csv_path)
    assert [r.class_name for r in result.records] == ["Center+Edge_Loc", "Normal"]
    assert len(result.failures) == 1 and "must be 0/1" in result.failures[0].reason


def test_load_image_folder_refuses_a_csv_without_the_columns(tmp_path):
    folder, _ = _image_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("name_of_thing,colour\nw0.png,red\n")
    with pytest.raises(DataFormatError, match=r"file column .* found columns \['name_of_thing', 'colour'\]"):
        load_image_folder(folder, csv_path)
    with pytest.raises(DataFormatError, match="no such folder"):
        load_image_folder(tmp_path / "nope", csv_path)


# ---------------------------------------------------------------- the loaders from the command line


def _data_cli(capsys, *args: str) -> tuple[int, str, str]:
    from defect_glm import main

    code = main(["data", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_stats_reads_a_wm811k_pickle(lswmd, capsys):
    code, out, err = _data_cli(capsys, "stats", str(lswmd), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["maps"] == 5 and report["shape"] is None
    assert report["shapes"] == {"26x26": 2, "15x20": 1, "30x34": 1, "45x48": 1}
    assert list(report["classes"]) == ["Normal", "Edge_Loc", "Edge_Ring", "Near_Full", "unlabelled"]
    assert all(c["count"] == 1 for c in report["classes"].values())
    first = load_wm811k(lswmd)[0].wafer
    assert report["classes"]["Normal"]["fail_fraction_mean"] == pytest.approx(first.failing / first.dies, abs=1e-4)
    code, out, _ = _data_cli(capsys, "stats", str(lswmd), "--limit", "2")
    assert code == 0 and "2 maps; grid sizes 26x26 (1), 30x34 (1)" in out and "Edge_Ring" in out


def test_cli_stats_reads_an_image_folder_and_reports_skipped_rows(tmp_path, capsys):
    folder, grids = _image_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,class\nw0.png,Center\nw1.png,Center\nphoto.png,Loc\nw2.png,EL+S\n")
    code, out, err = _data_cli(capsys, "stats", str(folder), "--labels", str(csv_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["shape"] == [52, 52] and report["maps"] == 3
    assert {k: v["count"] for k, v in report["classes"].items()} == {"Center": 2, "Edge_Loc+Scratch": 1}
    expected = np.mean([(g == 2).sum() / (g > 0).sum() for g in grids[:2]])
    assert report["classes"]["Center"]["fail_fraction_mean"] == pytest.approx(expected, abs=1e-4)
    assert "skipped line 4 (photo.png): not a wafer map" in err


def test_cli_stats_wrong_inputs_exit_2_with_the_reason(tmp_path, capsys):
    folder, _ = _image_folder(tmp_path)
    code, _, err = _data_cli(capsys, "stats", str(folder))
    assert code == 2 and "give its labels CSV with --labels" in err
    junk = tmp_path / "LSWMD.pkl"
    junk.write_bytes(b"\x80\x02not really")
    code, _, err = _data_cli(capsys, "stats", str(junk))
    assert code == 2 and "expected a pandas pickle of WM-811K" in err
    code, _, err = _data_cli(capsys, "stats", str(tmp_path / "absent.npz"))
    assert code == 2 and "no such file" in err
    only_photo = tmp_path / "photo.csv"
    only_photo.write_text("file,class\nphoto.png,Loc\n")
    code, _, err = _data_cli(capsys, "stats", str(folder), "--labels", str(only_photo))
    assert code == 2 and "could be read" in err
