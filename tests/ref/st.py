"""tests/ref/st.py -- a small safetensors reader/writer (json + numpy only).

Owns: the file format (8-byte little-endian header length, JSON header, raw
little-endian tensor bytes). Dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
BF16 has no numpy type: it is read as float32 (exact) and written from float32
by round-to-nearest-even.
Not a copy of the safetensors package: written from the format description.
"""

import json
import struct

import numpy as np

_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SIZE = {k: v.itemsize for k, v in _NP.items()}
_SIZE["BF16"] = 2


def _bf16_to_f32(raw):
    """raw: uint16 array of bf16 bit patterns -> float32 array (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x):
    """float32 array -> uint16 bf16 patterns, round to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    rounded[nan] = 0x7FC0
    return rounded


def read_header(path):
    """Return (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            raise ValueError(f"{path}: header length {n} is implausible")
        hdr = json.loads(f.read(n).decode("utf-8"))
    meta = hdr.pop("__metadata__", {}) or {}
    return hdr, meta, 8 + n


def load(path, names=None):
    """Read tensors of a safetensors file.

    Returns (dict name -> numpy array, metadata dict). BF16 comes back as float32.
    names: optional iterable restricting which tensors are read.
    """
    hdr, meta, base = read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in hdr.items():
            if names is not None and name not in names:
                continue
            dt = info["dtype"]
            if dt not in _SIZE:
                raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
            shape = tuple(info["shape"])
            b, e = info["data_offsets"]
            count = int(np.prod(shape, dtype=np.int64))
            if e - b != count * _SIZE[dt]:
                raise ValueError(f"{path}: tensor {name}: {e - b} bytes for {dt}{list(shape)}")
            f.seek(base + b)
            raw = f.read(e - b)
            if dt == "BF16":
                arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2")).reshape(shape)
            else:
                arr = np.frombuffer(raw, dtype=_NP[dt]).reshape(shape).copy()
            out[name] = arr
    return out, meta


def _dtype_name(arr):
    for k, v in _NP.items():
        if arr.dtype == v or arr.dtype == v.newbyteorder("="):
            return k
    raise ValueError(f"no safetensors dtype for numpy {arr.dtype}")


def save(path, tensors, metadata=None, dtypes=None):
    """Write tensors (dict name -> numpy array, in the dict's order).

    dtypes: optional dict name -> safetensors dtype to convert to (e.g. "F16", "BF16").
    metadata: dict str -> str, stored as __metadata__.
    """
    dtypes = dtypes or {}
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        dt = dtypes.get(name) or _dtype_name(arr)
        if dt == "BF16":
            raw = _f32_to_bf16(arr.astype(np.float32)).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr.astype(_NP[dt])).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for raw in blobs:
            f.write(raw)
