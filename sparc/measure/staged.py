"""Running a model one stage at a time over calibration batches: one stage's weights in memory.

The caller cuts the graph into stages (``analysis.stages``): lists of nodes, in an order where
each stage reads only graph inputs, constants, and values of earlier stages or its own.
:class:`StagedRun` keeps, per batch, only the values a later stage reads (and the graph
outputs when asked for), and runs one stage at a time in an ONNX Runtime session built for
that stage alone. The stage's weights reach ONNX Runtime as external initializers, straight
from their arrays (a memory-mapped external-data weight is not copied into a protobuf), and
the mapping of an external-data weight is released when its stage is done. So a model whose
weights exceed memory runs with one stage's weights in memory, plus each batch's values that
cross stage boundaries (the hidden state, masks, rotary tables).

Numerically, a stage sees exactly the arrays the previous stages produced, so a run gives
the same values whether the weights sit in memory or in a memory-mapped file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from sparc.data import CalibrationData
from sparc.errors import CalibrationError
from sparc.ir_utils import values_read
from sparc.measure import execute
from sparc.measure.reducers import Reducer
from sparc.runtime import LOWERINGS, lowered, one_line, session_options

INLINE_BYTES = 1 << 16  # smaller weights go into the stage's protobuf (shape constants stay foldable)


class StagedRun:
    """The calibration batches moved through ``stages`` of ``model`` one stage at a time.

    ``expose(i, reducers)`` streams values of stage i into reducers without keeping anything;
    ``advance()`` runs the next stage and keeps what later stages read. With ``outputs``, the
    graph outputs are kept too and :meth:`outputs` returns them once every stage has run.
    """

    def __init__(self, model: ir.Model, stages: Sequence[Sequence[ir.Node]], data: CalibrationData, *,
                 threads: int | None = None, outputs: bool = False):
        self.model = model
        self.stages = [list(nodes) for nodes in stages]
        self.threads = threads
        self.feeds = list(data)
        self.live = [dict(feeds) for feeds in self.feeds]
        self.next = 0
        self._constants = {out: node for node in model.graph if _is_constant_node(node) for out in node.outputs}
        self._last_read = self._last_reads(outputs)

    def expose(self, index: int, reducers: Mapping[str, Reducer | Sequence[Reducer]], *,
               description: str = "calibrating") -> None:
        """Run stage ``index`` (the next one) on every batch and stream the named values of
        the stage, or values it reads, into their reducers; nothing is kept."""
        self._check_next(index)
        targets = {name: r if isinstance(r, Sequence) else (r,) for name, r in reducers.items()}
        for batch, arrays in self._run(index, list(targets), description):
            for name, group in targets.items():
                for reducer in group:
                    reducer.update(arrays[name], self.feeds[batch])

    def advance(self, *, description: str = "running") -> None:
        """Run the next stage on every batch; keep its values that later stages (or the kept
        graph outputs) read, and drop the values no later stage reads."""
        index = self.next
        self._check_next(index)
        for batch, arrays in self._run(index, [], description):
            live = self.live[batch]
            live.update(arrays)
            for name in [n for n in live if self._last_read.get(n, -1) <= index and n not in self.feeds[batch]]:
                del live[name]
        self.next += 1

    def outputs(self) -> list[list[np.ndarray]]:
        """The graph outputs per batch, in graph-output order, once every stage has run."""
        if self.next != len(self.stages):
            raise CalibrationError(f"the graph outputs exist after all {len(self.stages)} stages, not after {self.next}")
        names = [v.name for v in self.model.graph.outputs]
        return [[live[name] for name in names] for live in self.live]

    def _check_next(self, index: int) -> None:
        if index != self.next:
            raise CalibrationError(f"stage {index} cannot run before stage {self.next}: stages run in order")

    def _last_reads(self, outputs: bool) -> dict[str, int]:
        """For every value crossing stages: the last stage that reads it."""
        last: dict[str, int] = {}
        for index, nodes in enumerate(self.stages):
            for value in _stage_reads(nodes):
                if not value.is_initializer() and value not in self._constants:
                    last[value.name] = index
        if outputs:
            last.update({v.name: len(self.stages) for v in self.model.graph.outputs})
        return last

    def _run(self, index: int, exposed: list[str], description: str):
        """(batch, {name: array}) for every batch: the stage's exposed values (its own or the
        ones it reads) and, when nothing is exposed, the values later stages read."""
        nodes = self.stages[index]
        produced = {out.name for node in nodes for out in node.outputs}
        wanted = exposed or [n for n in produced if self._last_read.get(n, -1) > index]
        computed = [n for n in dict.fromkeys(wanted) if n in produced]
        if not computed:
            for batch, live in enumerate(self.live):
                yield batch, {name: live[name] for name in wanted}
            return
        session, inputs, weights = self._session(index, computed)
        start = time.perf_counter()
        try:
            for batch, live in enumerate(self.live):
                try:
                    arrays = dict(zip(computed, session.run(computed, {n: live[n] for n in inputs})))
                except Exception as exc:  # ORT raises Fail, RuntimeException, InvalidArgument, ...
                    raise CalibrationError(f"{description}: stage {index} failed to run: {one_line(exc)}") from None
                yield batch, {name: arrays[name] if name in arrays else live[name] for name in wanted}
        finally:
            execute.count_calibration_seconds(time.perf_counter() - start)
            del session, weights  # the session first: it reads the weights' memory
            _release_mapped(nodes)

    def _session(self, index: int, outputs: list[str]) -> tuple[ort.InferenceSession, list[str], list]:
        """An ONNX Runtime session of stage ``index`` alone, the names of its inputs, and the
        weight arrays it reads in place (to keep alive while it runs)."""
        start = time.perf_counter()
        nodes = self.stages[index]
        read = _stage_reads(nodes)
        produced = {out for node in nodes for out in node.outputs}
        constants = list(dict.fromkeys(self._constants[v] for v in read if v in self._constants and v not in produced))
        weights = list(dict.fromkeys(v for v in read if v.is_initializer() and v not in produced))
        inputs = list(dict.fromkeys(v.name for v in read if v not in produced and v not in self._constants
                                    and not v.is_initializer()))
        missing = [n for n in inputs if n not in self.live[0]]
        if missing:
            raise CalibrationError(f"stage {index} reads {missing}, which no earlier stage or graph input provides")
        options = session_options(self.threads)
        options.enable_cpu_mem_arena = False
        proto, arrays = self._proto(index, constants + nodes, inputs, outputs, weights, options)
        try:
            session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CalibrationError(f"ONNX Runtime cannot load stage {index}: {one_line(exc)}") from None
        execute.count_calibration_seconds(time.perf_counter() - start)
        return session, inputs, arrays

    def _proto(self, index, nodes, inputs, outputs, weights, options) -> tuple[onnx.ModelProto, list]:
        """The stage as a model: inputs typed from the first batch's arrays, small weights
        inline, large ones declared external and handed to ``options`` as arrays."""
        initializers, names, arrays = [], [], []
        for value in weights:
            array = _plain_array(value.const_value)
            if array is None or array.nbytes < INLINE_BYTES:
                initializers.append(_inline(value))
                continue
            initializers.append(_external_placeholder(value.name, array))
            names.append(value.name)
            arrays.append((array, ort.OrtValue.ortvalue_from_numpy(array)))
        if names:
            options.add_external_initializers(names, [value for _, value in arrays])
        graph = onnx.helper.make_graph(
            [ir.serde.serialize_node(node) for node in nodes], f"stage_{index}",
            [_value_info(name, self.live[0][name]) for name in inputs],
            [onnx.helper.make_empty_tensor_value_info(name) for name in outputs], initializers)
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in
                                                             self.model.opset_imports.items()])
        proto.ir_version = self.model.ir_version
        proto.functions.extend(ir.serde.serialize_function(f) for f in self.model.functions.values())
        if any(node.domain in LOWERINGS for node in nodes):
            proto = ir.serde.serialize_model(lowered(ir.serde.deserialize_model(proto)))
        return proto, arrays


def _stage_reads(nodes: Sequence[ir.Node]) -> list[ir.Value]:
    return [v for node in nodes for v in values_read(node)]


def _is_constant_node(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.inputs


def _plain_array(tensor) -> np.ndarray | None:
    """The tensor as a C-contiguous numpy array of a type ONNX Runtime takes from numpy, else None."""
    try:
        array = tensor.numpy()
    except Exception:
        return None
    if array.dtype.kind not in "biuf" or array.dtype.type.__module__ != "numpy":
        return None
    return np.ascontiguousarray(array)


def _inline(value: ir.Value) -> onnx.TensorProto:
    """The initializer with its data in the protobuf (an external-data tensor read first)."""
    tensor = value.const_value
    if isinstance(tensor, ir.ExternalTensor):
        tensor = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
    proto = ir.serde.serialize_tensor(tensor)
    proto.name = value.name
    return proto


def _external_placeholder(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A TensorProto declaring ``name``'s type and shape with its data external; the session
    options supply the array itself."""
    tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                              dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", "sparc-stage-weights"), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    """A graph input of ``array``'s element type and rank, every dimension symbolic."""
    array = np.asarray(array)
    dims = [f"{name}_{axis}" for axis in range(array.ndim)]
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims)


def _release_mapped(nodes: Sequence[ir.Node]) -> None:
    """Unmap the external-data weights the stage read (they map again if read later)."""
    for value in _stage_reads(nodes):
        if value.is_initializer() and isinstance(value.const_value, ir.ExternalTensor):
            value.const_value.release()
