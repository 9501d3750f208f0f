"""Real table files in every recognized format, written with pyarrow, astropy and h5py, for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq


def parquet_bytes(table: pa.Table, **kw: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def csv_bytes(table: pa.Table, delimiter: str = ",") -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(delimiter=delimiter))
    return buf.getvalue()


def jsonl_bytes(rows: list[dict[str, object]]) -> bytes:
    import json

    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def arrow_file_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_stream_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def feather_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    feather.write_feather(table, buf)
    return buf.getvalue()


def fits_bintable_bytes(tmp: Path) -> bytes:
    """A binary table: a scaled int16 column, an unsigned one, a TNULL column, text, a 2-D cell column,
    a 3-D cell column (left out) and a logical column; plus an image HDU before it."""
    from astropy.io import fits

    n = 5
    cols = [
        fits.Column(name="id", format="J", array=np.arange(n, dtype=np.int32)),
        fits.Column(name="flux", format="I", array=np.array([0, 1, 2, 3, 4], dtype=np.int16)),
        fits.Column(
            name="count", format="I", bzero=32768, array=np.array([0, 1, 40000, 65535, 7], dtype=np.uint16)
        ),
        fits.Column(
            name="quality", format="J", null=-99, array=np.array([1, -99, 3, -99, 5], dtype=np.int32)
        ),
        fits.Column(name="name", format="8A", array=np.array(["alpha", "beta", "gamma", "delta", "eps"])),
        fits.Column(name="vec", format="3E", array=np.arange(n * 3, dtype=np.float32).reshape(n, 3)),
        fits.Column(name="cube", format="8E", dim="(2,2,2)", array=np.zeros((n, 2, 2, 2), dtype=np.float32)),
        fits.Column(name="ok", format="L", array=np.array([True, False, True, True, False])),
    ]
    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2))), fits.BinTableHDU.from_columns(cols)])
    path = tmp / "bin.fits"
    hdul.writeto(path, overwrite=True)
    with fits.open(path, mode="update") as f:  # scale the raw flux 0..4 to 10.0, 10.5 … 12.0
        f[1].header["TSCAL2"] = 0.5
        f[1].header["TZERO2"] = 10.0
    return path.read_bytes()


def fits_ascii_bytes(tmp: Path) -> bytes:
    from astropy.io import fits

    cols = [
        fits.Column(name="ra", format="F10.4", array=np.array([10.5, 20.25, 30.125])),
        fits.Column(name="n", format="I6", array=np.array([1, 2, 3])),
        fits.Column(name="label", format="A6", array=np.array(["a", "bb", "ccc"])),
    ]
    path = tmp / "ascii.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.TableHDU.from_columns(cols)]).writeto(path, overwrite=True)
    return path.read_bytes()


def fits_image_only_bytes(tmp: Path) -> bytes:
    from astropy.io import fits

    path = tmp / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(path, overwrite=True)
    return path.read_bytes()


def votable_bytes(tmp: Path) -> bytes:
    from astropy.io.votable import from_table
    from astropy.table import MaskedColumn, Table

    t = Table()
    t["ra"] = [1.0, 2.0, 3.0]
    t["dec"] = [-1.0, 0.0, 1.0]
    t["name"] = ["x", "y", "z"]
    t["mag"] = MaskedColumn([15, 16, 17], mask=[False, True, False], dtype=np.int32)
    path = tmp / "t.vot"
    from_table(t).to_xml(str(path))
    return path.read_bytes()


def hdf5_compound_bytes(tmp: Path) -> bytes:
    import h5py

    dtype = np.dtype([("x", "<f8"), ("n", ">i4"), ("tag", "S4")])
    rec = np.array([(0.5, 1, b"ab"), (1.5, 2, b"cd"), (2.5, 3, b"ef"), (3.5, 4, b"gh")], dtype=dtype)
    path = tmp / "c.h5"
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "compound"
        g = f.create_group("catalog")
        g.create_dataset("objects", data=rec)
    return path.read_bytes()


def hdf5_columns_bytes(tmp: Path) -> bytes:
    import h5py

    path = tmp / "cols.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("table")
        g.create_dataset("a", data=np.arange(6, dtype=np.int64))
        g.create_dataset("b", data=np.linspace(0, 1, 6))
        g.create_dataset("pos", data=np.arange(12, dtype=np.float32).reshape(6, 2))
        g.create_dataset("name", data=np.array([f"s{i}" for i in range(6)], dtype=h5py.string_dtype()))
        g.create_dataset("short", data=np.arange(3))  # another length: not a column
    return path.read_bytes()
