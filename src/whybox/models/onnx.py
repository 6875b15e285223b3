"""ONNX models as black boxes: an ``.onnx`` file run by ONNX Runtime on the CPU (the ``onnx`` extra).

``whybox.adapt("model.onnx")`` (or an :class:`OnnxModel`, or an ``onnxruntime.InferenceSession``) gives a black-box
adapter: the perturbation methods, RISE, LIMA and every metric run on it and give the numbers the same network as a
torch module gives; the gradient methods and CAMs need a torch model (an ONNX graph gives no gradients to torch).
On the command line ``--model model.onnx`` does the same; a run's fingerprint is the graph's bytes (the file's, or
those a session was made from) and, for a graph saved with its weights in external data files
(``save_as_external_data=True``: ``model.onnx`` and ``model.onnx.data``), those files' bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whybox.errors import DataFormatError, InvalidInputError, InvalidParameterError, MissingExtraError, did_you_mean

__all__ = ["OnnxModel", "is_onnx_path"]

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def is_onnx_path(model: Any) -> bool:
    """``model`` names an ``.onnx`` file (a string or path; it need not exist yet)."""
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx"


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError(f"ONNX models need ONNX Runtime: pip install 'whybox[onnx]' ({exc}).") from exc
    return onnxruntime


class OnnxModel:
    """An ONNX graph with one input, called as ``model(x) -> scores``: ``x`` ``(B, *S)`` (a tensor) goes in as a NumPy
    array of the graph input's dtype, and the selected output ``(B, K)`` comes back as a NumPy array.

    Parameters
    ----------
    source
        A path to an ``.onnx`` file, the file's bytes, or an ``onnxruntime.InferenceSession`` (kept as it is). A
        graph whose weights are in external data files (saved with ``save_as_external_data=True``) finds them next
        to its path (ONNX Runtime reads them relative to the ``.onnx`` file; from bytes, relative to the working
        directory).
    output
        Which output holds the scores: a name or an index. ``None``: the graph's only output (a graph with several
        is an error that lists them).
    threads
        ONNX Runtime's intra-op threads; ``None``: torch's thread count, so the two share the machine alike (a
        session passed in keeps its own options: ``threads`` is then an error).

    A graph with a fixed batch dimension (an export traced with batch 1) gets its rows in chunks of that size, the
    last one padded with copies of its last row (their outputs dropped).

    Raises
    ------
    InvalidInputError
        When called on values an integer graph input (``int64``, ``int32``) cannot hold as they are: a non-whole
        fill, baseline, background or noise (ONNX Runtime would get them cut toward zero), or values out of range.
    """

    def __init__(self, source: Any, *, output: str | int | None = None, threads: int | None = None) -> None:
        ort = _runtime()
        self.name = "onnx model"
        self._bytes: bytes | None = None
        self._path: Path | None = None  # the file a path-made model was read from (pickled by it: external data)
        self.threads = threads
        if isinstance(source, ort.InferenceSession):
            if threads is not None:  # it would be dropped without a word: the session was made with its own options
                raise InvalidParameterError(
                    f"threads={threads!r} cannot apply to an onnxruntime.InferenceSession passed in (it runs with the "
                    "SessionOptions it was made with); set intra_op_num_threads there, or pass the .onnx file's path."
                )
            self.session = source
        else:
            if isinstance(source, (bytes, bytearray)):
                self._bytes = bytes(source)
            elif is_onnx_path(source):
                path = Path(source).expanduser()
                if not path.is_file():
                    raise InvalidParameterError(
                        f"model {str(source)!r}: no such ONNX file (looked at {path.resolve()})."
                    )
                self._bytes = path.read_bytes()
                self._path = path.absolute()
                self.name = path.name
            else:
                raise InvalidParameterError(
                    f"source must be an .onnx file's path, its bytes or an onnxruntime.InferenceSession; got "
                    f"{type(source).__name__} {str(source)[:80]!r}."
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(threads) if threads is not None else torch.get_num_threads()
            opts.inter_op_num_threads = 1
            # from the file where there is one: ONNX Runtime finds a graph's external data files next to it
            made = str(self._path) if self._path is not None else self._bytes
            try:
                self.session = ort.InferenceSession(made, opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ONNX Runtime's own error types: a corrupt or unsupported graph
                files = _external_files(self._bytes, Path.cwd()) if self._path is None else []
                hint = (
                    f" The graph keeps its weights in external data file(s) {', '.join(map(repr, files))}, which "
                    "ONNX Runtime finds next to the .onnx file only when the model is made from its path: "
                    "whybox.adapt('path/to/model.onnx')."
                    if files
                    else ""
                )
                raise DataFormatError(
                    f"model {self.name!r} cannot be loaded by ONNX Runtime: {type(exc).__name__}: "
                    f"{str(exc)[:300]}{hint}"
                ) from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidParameterError(
                f"ONNX model {self.name!r} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); whybox "
                "explains a graph of one input. Fix the others in a wrapper function: "
                "lambda x: session.run(None, {'<input>': x.numpy(), ...})[0]."
            )
        self.input = inputs[0]
        if self.input.type not in _DTYPES:
            raise InvalidParameterError(
                f"ONNX model {self.name!r} reads {self.input.type} inputs; whybox feeds {', '.join(_DTYPES)}."
            )
        self.dtype = _DTYPES[self.input.type]
        names = [o.name for o in self.session.get_outputs()]
        if output is None:
            if len(names) != 1:
                raise InvalidParameterError(
                    f"ONNX model {self.name!r} has {len(names)} outputs ({', '.join(names)}); pass output= (a name or "
                    "an index) to say which holds the (B, K) scores."
                )
            output = 0
        if isinstance(output, str):
            if output not in names:
                raise InvalidParameterError(
                    f"output={output!r} is not an output of ONNX model {self.name!r}; it has {', '.join(names)}."
                    f"{did_you_mean(output, names)}"
                )
            output = names.index(output)
        if isinstance(output, bool) or not isinstance(output, int) or not -len(names) <= output < len(names):
            raise InvalidParameterError(
                f"output must be an output name or an index in 0..{len(names) - 1}; got {output!r}."
            )
        self.output = output % len(names)
        shape = self.input.shape
        self.batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        self.row_shape = tuple(shape[1:]) if shape else ()
        #: the channels a graph whose first convolution is 1-D reads (a 1-D CNN on signals (B, C, L), as
        #: ``is_signal`` finds from a torch model's first ``nn.Conv1d``); None otherwise or without the onnx package
        # a session's graph as it is now, the one it was made from (read once: a file rewritten later is another),
        # with the external data files it names (next to its file; a graph made from bytes: the working directory's)
        if self._bytes is not None:
            graph: bytes | None = self._bytes
            folder = self._path.parent if self._path is not None else Path.cwd()
        else:
            graph, folder = _session_graph(self.session)
        self._external = _external_files(graph, folder) if graph is not None else []
        self._digest, self._why = self._fingerprint(graph, folder)
        self.signal_channels = _first_conv1d_channels(graph) if len(self.row_shape) == 2 else None

    def _fingerprint(self, graph: bytes | None, folder: Path) -> tuple[str | None, str]:
        """SHA-256 of ``graph`` and of the external data files it names (read from ``folder``), or ``None`` and why a
        run cannot fingerprint this model's weights."""
        if graph is None:
            return None, (
                f"ONNX model {self.name!r} comes from an onnxruntime.InferenceSession whose graph whybox cannot read "
                "(ONNX Runtime keeps neither its bytes nor a file that is still there), so a run cannot fingerprint "
                "its weights; make the model from the .onnx file's path or bytes: whybox.adapt('model.onnx')."
            )
        h = hashlib.sha256(graph)
        for name in self._external:  # the weights: a graph re-exported with new ones may keep its own bytes
            file = folder / name
            h.update(f"\n{name}\n".encode())
            try:
                with file.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                return None, (
                    f"ONNX model {self.name!r} keeps weights in the external data file {name!r}, which whybox cannot "
                    f"read at {file} ({type(exc).__name__}), so a run cannot fingerprint its weights; keep the file "
                    "next to the .onnx file and make the model from the .onnx file's path."
                )
        return h.hexdigest(), ""

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the graph (a run's weights fingerprint): of the file's bytes where whybox read them, of the
        bytes or the file a session passed in was made from, then of each external data file the graph names (its
        weights, where it was saved with ``save_as_external_data=True``); all read when this model was made. A graph
        without external data: the SHA-256 of its bytes.

        Raises
        ------
        InvalidParameterError
            For a session whose graph cannot be read (its file is gone) or a graph whose external data file cannot be
            read: without them a run could not tell a model of other weights from this one.
        """
        if self._digest is None:
            raise InvalidParameterError(self._why)
        return self._digest

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(x)
        row = tuple(x.shape[1:])
        fixed = [(i, d) for i, d in enumerate(self.row_shape) if isinstance(d, int) and d > 0]
        if len(row) != len(self.row_shape) or any(row[i] != d for i, d in fixed):
            want = ", ".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in self.row_shape)
            raise InvalidInputError(
                f"ONNX model {self.name!r} reads input {self.input.name!r} of shape (batch, {want}); got rows of "
                f"shape {row} (a batch of {x.shape[0]} made from the inputs)."
            )
        if x.is_floating_point() and np.issubdtype(self.dtype, np.integer):
            self._check_whole(x.detach())
        arr = np.ascontiguousarray(x.detach().to("cpu").numpy(), dtype=self.dtype)
        if self.batch is None:
            return np.asarray(self._run(arr))
        n, outs = arr.shape[0], []
        for start in range(0, n, self.batch):
            chunk = arr[start : start + self.batch]
            short = self.batch - chunk.shape[0]
            if short:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            outs.append(np.asarray(self._run(chunk))[: self.batch - short])
        return np.concatenate(outs)

    def _check_whole(self, x: torch.Tensor) -> None:
        """Refuse floats an integer graph input would get changed: NumPy's cast cuts 4.2 to 4 and -0.7 to 0 without
        a word (and wraps what is out of range), so the graph would score other values than the method made."""
        kind = np.dtype(self.dtype)
        info = np.iinfo(kind.name)
        bad = ~torch.isfinite(x) | (x != torch.round(x)) | (x < info.min) | (x > info.max)
        if not bool(bad.any()):
            return
        where = tuple(int(i) for i in bad.nonzero()[0])
        v = float(x[where])
        got = (
            f"{v:.6g}, which it would read as {int(v)}"
            if np.isfinite(v) and info.min <= v <= info.max
            else f"{v:.6g}, which {kind.name} cannot hold"
        )
        raise InvalidInputError(
            f"ONNX model {self.name!r} reads input {self.input.name!r} as {kind.name} (whole numbers), but a batch "
            f"made from the inputs holds {got} (at {list(where)} of a batch of {x.shape[0]} rows): a fill, baseline, "
            "background or noise gave non-whole values. Pass whole-number fills (fill=0, or a tensor of whole values "
            "such as X.float().mean(0).round()) and whole-valued baselines or backgrounds, or export the graph with a "
            "float input (cast to integers inside it)."
        )

    def _run(self, arr: np.ndarray) -> Any:
        return self.session.run(None, {self.input.name: arr})[self.output]

    def __reduce__(self) -> tuple[Any, ...]:  # Ray and multiprocessing: a session does not pickle, its bytes do
        if self._bytes is None:
            raise TypeError("an OnnxModel made from an InferenceSession cannot be pickled; make it from the file.")
        if self._path is not None and self._external:  # weights in files next to it: rebuilt from its path, checked
            # by fingerprint
            return (_rebuild_from_path, (str(self._path), self.output, self.name, self.threads, self._digest))
        if self._external:
            raise TypeError(
                f"ONNX model {self.name!r} was made from bytes whose weights are in external data files "
                f"({', '.join(map(repr, self._external))}), which its bytes do not carry, so it cannot be pickled; "
                "make it from the .onnx file's path (rebuilt from that path where it is unpickled)."
            )
        return (_rebuild, (self._bytes, self.output, self.name, self.threads))

    def __repr__(self) -> str:
        return f"OnnxModel({self.name!r}, input {self.input.name} {self.input.shape}, output {self.output})"


def _session_graph(session: Any) -> tuple[bytes | None, Path]:
    """The graph's bytes of an ``onnxruntime.InferenceSession`` made by the caller, from what it was made of (its
    file or bytes, which onnxruntime keeps), or ``None`` where it keeps neither; and the folder its external data
    files are read from (its file's, or for bytes the working directory)."""
    data = getattr(session, "_model_bytes", None)
    if isinstance(data, (bytes, bytearray)) and data:
        return bytes(data), Path.cwd()
    path = getattr(session, "_model_path", None)
    if isinstance(path, (str, Path)) and Path(path).is_file():
        try:
            return Path(path).read_bytes(), Path(path).absolute().parent
        except OSError:
            return None, Path.cwd()
    return None, Path.cwd()


def _external_files(data: bytes, folder: Path) -> list[str]:
    """The external data files (their ``location``, relative to the graph's folder) that the tensors of the graph
    ``data`` keep their values in, sorted. With the onnx package, read from the tensors; without it (or where it
    cannot read the graph), from the bytes: each ``location`` entry of an external-data list (a key ``location``
    followed by its value, a path) whose path is a file in ``folder`` (an output or tensor named "location" is
    followed by no such path)."""
    try:
        import onnx
    except ImportError:
        return _external_files_in_bytes(data, folder)
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf's own errors: ONNX Runtime read the graph, so say what the bytes allow
        return _external_files_in_bytes(data, folder)
    return sorted(
        {
            entry.value
            for tensor in _tensors(model)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def _external_files_in_bytes(data: bytes, folder: Path) -> list[str]:
    """:func:`_external_files` without the onnx package, from protobuf's wire format: a tensor's external data is a
    list of ``StringStringEntryProto`` (its field 13, tag ``6a <length>``), one of them field 1, the key
    (``0a 08 "location"``), then field 2, the value (``12 <length> <path>``). The enclosing tag and length are
    checked, so a node whose last input is named "location" (followed by its output, ``12 <length> <name>``) is no
    entry; a path is kept where it is a file in ``folder``."""
    key, found, start = b"\x0a\x08location\x12", set(), 0
    while (at := data.find(key, start)) >= 0:
        start, i = at + 1, at + len(key)
        length, size = _varint(data, i)
        raw = data[i + size : i + size + length]
        if size == 0 or len(raw) != length:
            continue
        entry = len(key) + size + length  # the entry's own length, which its tag's length must be
        if data[max(0, at - 1 - len(_encode_varint(entry))) : at] != b"\x6a" + _encode_varint(entry):
            continue
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name and "\x00" not in name:
            found.add(name)
    return sorted(name for name in found if (folder / name).is_file())


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and its size in bytes (0 where the bytes end inside it)."""
    value = shift = 0
    for n in range(10):
        if i + n >= len(data):
            return 0, 0
        value |= (data[i + n] & 0x7F) << shift
        shift += 7
        if not data[i + n] & 0x80:
            return value, n + 1
    return 0, 0


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of an ONNX ``model``: initializers (sparse ones' values and indices), node attributes,
    those of subgraphs (``If``, ``Loop``, ``Scan`` bodies) and of local functions."""

    def of_graph(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            yield from of_node(node)

    def of_node(node: Any) -> Iterator[Any]:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            sparse = [a.sparse_tensor] if a.HasField("sparse_tensor") else []
            for sp in [*sparse, *a.sparse_tensors]:
                yield from (sp.values, sp.indices)
            if a.HasField("g"):
                yield from of_graph(a.g)
            for g in a.graphs:
                yield from of_graph(g)

    yield from of_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from of_node(node)


def _first_conv1d_channels(data: bytes | None) -> int | None:
    """Input channels of the graph's first ``Conv`` node (in the graph's topological order) when its kernel is 1-D
    (weight rank 3); ``None`` for another first convolution, none, or no ``onnx`` package to read the graph with."""
    if data is None:
        return None
    try:
        import onnx
    except ImportError:
        return None
    try:
        graph = onnx.load_model_from_string(data).graph
    except Exception:  # protobuf's own errors: ONNX Runtime read the file, so treat it as a graph without one
        return None
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv":
            weight = dims.get(node.input[1]) if len(node.input) > 1 else None
            if weight is None or len(weight) != 3:
                return None
            group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
            return int(weight[1]) * int(group)
    return None


def _rebuild(data: bytes, output: int, name: str, threads: int | None = None) -> OnnxModel:
    model = OnnxModel(data, output=output, threads=threads)
    model.name = name
    return model


def _rebuild_from_path(path: str, output: int, name: str, threads: int | None, digest: str | None) -> OnnxModel:
    """A pickled model whose weights are in external data files, made again from its path: refused where the
    files there are not those it was made from (another machine's, or re-exported since)."""
    model = OnnxModel(path, output=output, threads=threads)
    if model._digest != digest:
        raise InvalidParameterError(
            f"ONNX model {name!r} was pickled from {path} with its external data files, but the files there now hold "
            "another graph or other weights (re-exported since, or another machine's), so it cannot be rebuilt as "
            "it was; give every worker the same files (a shared folder) and keep them unchanged during a run."
        )
    model.name = name
    return model
