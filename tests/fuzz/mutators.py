"""Seeded mutations of snnc's input files: ONNX models, compiled artifacts, .npz data, .nir (HDF5).

Each mutator takes the seed file's bytes and a ``random.Random`` and returns the damaged bytes
(or, for HDF5 edits, writes a damaged copy). Every mutation is reproducible from (kind, case
seed): the fuzz driver records both for every case it runs.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Values a damaged number tends to take: boundaries, huge, negative, zero.
INTERESTING_INTS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    99,
    255,
    256,
    4096,
    2**15 - 1,
    2**16,
    2**31 - 1,
    2**31,
    2**40,
    2**62,
    -(2**31),
    10**12,
]
INTERESTING_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-30,
    1e30,
    3.4e38,
    -3.4e38,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e12,
]


# ---- raw bytes ------------------------------------------------------------------------------------
def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    """1 to 8 random bytes set to random values."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    """1 to 4 single-bit flips."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """The file cut at a random point (never empty)."""
    return data[: rng.randrange(1, len(data))]


def splice(data: bytes, rng: random.Random) -> bytes:
    """A random block duplicated or removed."""
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 64))
    return data[:a] + data[a:b] * 2 + data[b:] if rng.random() < 0.5 else data[:a] + data[b:]


RAW = [flip_bytes, flip_bits, truncate, splice]


# ---- ONNX protobuf fields -------------------------------------------------------------------------
def _pick(rng, seq):
    seq = list(seq)
    return rng.choice(seq) if seq else None


def _edit_attribute(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = [n for n in model.graph.node if n.attribute]
    node = _pick(rng, nodes)
    if node is None:
        return
    attr = rng.choice(list(node.attribute))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(INTERESTING_INTS)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice(INTERESTING_FLOATS)
    elif attr.type == onnx.AttributeProto.INTS and len(attr.ints):
        attr.ints[rng.randrange(len(attr.ints))] = rng.choice(INTERESTING_INTS)
    elif attr.type == onnx.AttributeProto.STRING:
        attr.s = rng.choice([b"", b"xyz", b"\xff\xfe", b"lif", b"hard", b"zero", attr.s * 2])
    elif attr.type == onnx.AttributeProto.TENSOR:
        attr.t.dims.append(rng.choice(INTERESTING_INTS[:8]))
    else:
        node.attribute.remove(attr)


def _add_attribute(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _pick(rng, model.graph.node)
    if node is not None:
        name = rng.choice(["group", "axis", "kernel_shape", "pads", "strides", "gain", "neuron", "tau", "alpha"])
        value = rng.choice([rng.choice(INTERESTING_INTS), rng.choice(INTERESTING_FLOATS), [1, 2], "lif"])
        node.attribute.append(helper.make_attribute(name, value))


def _edit_dims(model: onnx.ModelProto, rng: random.Random) -> None:
    infos = [
        v
        for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
        if v.type.tensor_type.shape.dim
    ]
    choice = rng.random()
    if choice < 0.5 and model.graph.initializer:
        tensor = rng.choice(list(model.graph.initializer))
        if tensor.dims and rng.random() < 0.7:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(INTERESTING_INTS[:12])
        else:
            tensor.dims.append(rng.choice([1, 2, 3]))
    elif infos:
        dims = rng.choice(infos).type.tensor_type.shape.dim
        dim = dims[rng.randrange(len(dims))]
        dim.dim_value = rng.choice(INTERESTING_INTS[:14])


def _edit_data_type(model: onnx.ModelProto, rng: random.Random) -> None:
    types = [1, 2, 3, 6, 7, 9, 10, 11, 16, 0, 8, 30]
    if rng.random() < 0.5 and model.graph.initializer:
        rng.choice(list(model.graph.initializer)).data_type = rng.choice(types)
    else:
        infos = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
        if infos:
            rng.choice(infos).type.tensor_type.elem_type = rng.choice(types)


def _edit_opset(model: onnx.ModelProto, rng: random.Random) -> None:
    imp = rng.choice(list(model.opset_import))
    imp.version = rng.choice([0, 1, 6, 9, 10, 13, 17, 21, 22, 28, 29, 99, -1, 2**40])


def _edit_initializer_values(model: onnx.ModelProto, rng: random.Random) -> None:
    if not model.graph.initializer:
        return
    tensor = rng.choice(list(model.graph.initializer))
    try:
        value = numpy_helper.to_array(tensor).copy()
    except Exception:
        return
    if value.size and value.dtype.kind == "f":
        flat = value.reshape(-1)
        flat[rng.randrange(flat.size)] = rng.choice(INTERESTING_FLOATS)
    elif value.size and value.dtype.kind in "iu":
        flat = value.reshape(-1)
        flat[rng.randrange(flat.size)] = rng.choice(INTERESTING_INTS[:13])
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def _shorten_raw_data(model: onnx.ModelProto, rng: random.Random) -> None:
    tensors = [t for t in model.graph.initializer if t.raw_data]
    if tensors:
        t = rng.choice(tensors)
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]


def _rewire(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(model.graph.node)
    if not nodes:
        return
    action = rng.random()
    node = rng.choice(nodes)
    if action < 0.3:
        model.graph.node.remove(node)
    elif action < 0.6 and node.input:
        others = [o for n in nodes for o in n.output] + [i.name for i in model.graph.input]
        node.input[rng.randrange(len(node.input))] = rng.choice(others + ["", "missing"])
    elif action < 0.8:
        node.op_type = rng.choice(["Relu", "Conv", "Gemm", "Neuron", "LSTM", "Loop", "Expand", "MaxPool", "Foo"])
    else:
        node.domain = rng.choice(["", "snncompiler", "ai.onnx.ml", "com.microsoft"])


def _edit_metadata(model: onnx.ModelProto, rng: random.Random) -> None:
    props = list(model.metadata_props)
    if not props:
        model.metadata_props.add(key="snncompiler.artifact", value="1")
        return
    prop = rng.choice(props)
    action = rng.random()
    if action < 0.2:
        model.metadata_props.remove(prop)
    elif action < 0.7 and prop.value.startswith("{"):
        try:
            obj = json.loads(prop.value)
        except json.JSONDecodeError:
            return
        key = rng.choice(list(obj) + ["timesteps", "encoding", "maxpool", "unknown_key"]) if obj else "timesteps"
        obj[key] = rng.choice(
            [None, True, -1, 0, 1, 2**40, 10**12, 1e12, "rate", "sequence", "gated", "x", [1], {"a": 1}, float("nan")]
        )
        prop.value = json.dumps(obj)
    else:
        prop.value = rng.choice(["", "0", "1", "99", "-5", "lots", "{", "[]", "1e12", "65537", str(2**40)])


ONNX_EDITS = [
    _edit_attribute,
    _add_attribute,
    _edit_dims,
    _edit_data_type,
    _edit_opset,
    _edit_initializer_values,
    _shorten_raw_data,
    _rewire,
    _edit_metadata,
]


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """A raw-byte mutation (a third of the time) or 1-2 protobuf field edits of an ONNX file."""
    if rng.random() < 0.33:
        return rng.choice(RAW)(data, rng)
    model = onnx.ModelProto.FromString(data)
    for _ in range(rng.randint(1, 2)):
        rng.choice(ONNX_EDITS)(model, rng)
    return model.SerializeToString()


# ---- .npz -----------------------------------------------------------------------------------------
def _npz_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: dict[str, bytes], compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def mutate_npz(data: bytes, rng: random.Random) -> bytes:
    """Raw damage, zip-field edits (compression method, sizes), .npy header edits, odd arrays."""
    action = rng.random()
    if action < 0.35:
        return rng.choice(RAW)(data, rng)
    members = _npz_members(data)
    name = rng.choice(list(members))
    if action < 0.5:  # zip header fields: method, sizes
        out = bytearray(data)
        offset = rng.choice([8, 18, 22])  # method, compressed size, uncompressed size (local header)
        if offset == 8:
            struct.pack_into("<H", out, offset, rng.choice([1, 6, 12, 14, 93, 99, 0xFFFF]))
        else:
            struct.pack_into("<I", out, offset, rng.choice([0, 1, 2**31, 2**32 - 1]))
        cd = out.rfind(b"PK\x01\x02")
        if cd >= 0 and rng.random() < 0.7:
            struct.pack_into(
                "<H" if offset == 8 else "<I",
                out,
                cd + offset + 2,
                struct.unpack_from("<H" if offset == 8 else "<I", out, offset)[0],
            )
        return bytes(out)
    if action < 0.75:  # the .npy header text
        payload = members[name]
        end = payload.index(b"\n") + 1
        header = payload[10:end].decode("latin1")
        edits = [
            ("'<f4'", rng.choice(["'<f8'", "'|O'", "'<U4'", "'>f4'", "'<c8'", "'V0'", "'<i8'", "'xx'"])),
            ("'<i8'", rng.choice(["'<f4'", "'|O'", "'|b1'"])),
            ("False", "True"),
            ("(", rng.choice(["(1000000000000, ", "(-1, ", "(0, ", "(4611686018427387904, 4, ", "(["])),
        ]
        old, new = rng.choice(edits)
        header = header.replace(old, new, 1)
        header = header.ljust(len(payload[10:end]) - 1)[: max(len(header), 1)] + "\n"
        body = payload[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + payload[end:]
        members[name] = body
        return _zip(members, rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    x = rng.choice(
        [
            np.zeros((0, 1, 8, 8), np.float32),
            np.full((2, 1, 8, 8), np.nan, np.float32),
            np.ones((2, 1, 8), np.float32),
            np.ones((2, 3, 8, 8), np.float32),
            np.ones(5, np.float32),
            np.ones((2, 1, 8, 8), np.float16),
            np.ones((2, 1, 8, 8), np.int32),
            np.full((2, 1, 8, 8), 3e38, np.float32),
            np.ones((1, 1, 8, 8), np.float64),
            np.zeros((2**16, 1, 8, 8), np.uint8),
        ]
    )
    members[name if rng.random() < 0.7 else "x.npy"] = _npy(x)
    if rng.random() < 0.3:
        members["y.npy"] = _npy(
            rng.choice([np.arange(3), np.array([2**40]), np.array([-1, 0]), np.ones(2, np.float32)])
        )
    return _zip(members, rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))


# ---- .nir (HDF5) ------------------------------------------------------------------------------------
def mutate_nir(data: bytes, rng: random.Random, path) -> None:
    """Write a damaged copy of a NIR file to ``path``: raw damage, or an HDF5 edit made with h5py
    (a dataset's values, shape or dtype changed, a dataset or group removed, a string changed)."""
    if rng.random() < 0.4:
        with open(path, "wb") as f:
            f.write(rng.choice(RAW)(data, rng))
        return
    import h5py

    with open(path, "wb") as f:
        f.write(data)
    with h5py.File(path, "r+") as h5:
        datasets: list[str] = []
        h5.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        name = rng.choice(datasets)
        old = h5[name]
        value = old[()]
        action = rng.random()
        if action < 0.15:
            del h5[name]
            return
        if isinstance(value, bytes) or old.dtype.kind in "SOU":
            new = rng.choice([b"IF", b"LIF", b"Conv2d", b"Foo", b"", b"\xff\xfe", b"CubaLIF", b"Input", b"Output"])
        elif action < 0.45:
            arr = np.array(value, dtype=np.float64, copy=True)
            if arr.size:
                flat = arr.reshape(-1)
                flat[rng.randrange(flat.size)] = rng.choice(INTERESTING_FLOATS + [float(v) for v in INTERESTING_INTS])
            new = arr.astype(old.dtype) if old.dtype.kind == "f" else arr
        elif action < 0.65:
            arr = np.asarray(value)
            shape = list(arr.shape) or [1]
            shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2, 3, 5, 65])
            new = np.resize(arr, shape)
        elif action < 0.8:
            new = np.asarray(value).astype(rng.choice([np.int64, np.float16, np.bool_, np.uint8]))
        else:
            new = rng.choice([np.float64(1e12), np.int64(2**40), np.float64(np.nan), np.int64(-1), np.zeros((0,))])
        del h5[name]
        h5[name] = new


__all__ = ["mutate_onnx", "mutate_npz", "mutate_nir", "RAW"]
