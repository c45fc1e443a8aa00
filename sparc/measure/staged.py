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

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from sparc.data import CalibrationData
from sparc.distributed import Engine, Shard
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
    On an ``engine`` of several workers (``sparc.distributed``) the batches, and the values
    kept for them, live on the workers (batch i on worker i mod k); each stage's model and
    weights go to them once, and exposed statistics come back as reducers merged in worker
    order (the same sums as in one process, up to float64 summation order).
    """

    def __init__(self, model: ir.Model, stages: Sequence[Sequence[ir.Node]], data: CalibrationData | Sequence, *,
                 threads: int | None = None, outputs: bool = False, engine: Engine | None = None):
        self.model = model
        self.stages = [list(nodes) for nodes in stages]
        self.threads = threads
        batches = list(data)
        self.batches = len(batches)
        self.next = 0
        self._first = dict(batches[0])  # input types of stage 0 come from its arrays
        self._constants = {out: node for node in model.graph if _is_constant_node(node) for out in node.outputs}
        self._last_read = self._last_reads(outputs)
        self._types: dict[str, tuple[str, int]] = {}  # value name -> (numpy dtype, rank) of kept values
        self._shards = None
        if engine is not None and engine.workers > 1 and len(batches) > 1:
            self._shards = engine.shards(batches)
            self._shards.map(_hold_batches)
        else:
            self._local = Shard(0, batches)
            _hold_batches(self._local)

    def expose(self, index: int, reducers: Mapping[str, Reducer | Sequence[Reducer]], *,
               description: str = "calibrating") -> None:
        """Run stage ``index`` (the next one) on every batch and stream the named values of
        the stage, or values it reads, into their reducers; nothing is kept."""
        self._check_next(index)
        targets = {name: list(r) if isinstance(r, Sequence) else [r] for name, r in reducers.items()}
        if self._shards is None:
            self._execute(index, list(targets), lambda program: _run_stage(self._local, program, targets))
            return
        fresh = {name: [r.fresh() for r in group] for name, group in targets.items()}
        parts = self._execute(index, list(targets), lambda program: self._shards.map(_reduce_on_shard, program, fresh))
        for part in parts:
            for name, group in targets.items():
                for reducer, share in zip(group, part[name]):
                    reducer.merge(share)

    def advance(self, *, description: str = "running") -> None:
        """Run the next stage on every batch; keep its values that later stages (or the kept
        graph outputs) read, and drop the values no later stage reads."""
        index = self.next
        self._check_next(index)
        kept = self._execute(index, [], lambda program: self._on_every_shard(_run_stage, program, None))
        self._types.update(kept[0] if kept else {})
        self.next += 1

    def outputs(self) -> list[list[np.ndarray]]:
        """The graph outputs per batch, in graph-output order, once every stage has run."""
        if self.next != len(self.stages):
            raise CalibrationError(f"the graph outputs exist after all {len(self.stages)} stages, not after {self.next}")
        names = [v.name for v in self.model.graph.outputs]
        parts = self._on_every_shard(_kept_values, names)
        by_batch = [None] * self.batches
        for shard, part in enumerate(parts):  # batch i is on shard i mod k, at position i // k
            for position, arrays in enumerate(part):
                by_batch[shard + position * len(parts)] = arrays
        return by_batch

    def close(self) -> None:
        """Free the workers' batches (on an engine)."""
        if self._shards is not None:
            self._shards.close()

    def _on_every_shard(self, fn, *args) -> list:
        return [fn(self._local, *args)] if self._shards is None else self._shards.map(fn, *args)

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

    def _execute(self, index: int, exposed: list[str], run):
        """Build stage ``index``'s program, ``run`` it, then release the stage's mapped weights."""
        start = time.perf_counter()
        try:
            return run(self._program(index, exposed))
        finally:
            execute.count_calibration_seconds(time.perf_counter() - start)
            _release_mapped(self.stages[index])

    def _program(self, index: int, exposed: list[str]) -> StageProgram:
        """Stage ``index`` alone as a model: its inputs, the values it computes for ``exposed``
        (nothing exposed: the values later stages read), the weights it reads."""
        nodes = self.stages[index]
        read = _stage_reads(nodes)
        produced = {out for node in nodes for out in node.outputs}
        names = {v.name for v in produced}
        wanted = exposed or [n for n in dict.fromkeys(v.name for v in produced) if self._last_read.get(n, -1) > index]
        computed = [n for n in dict.fromkeys(wanted) if n in names]
        constants = list(dict.fromkeys(self._constants[v] for v in read if v in self._constants and v not in produced))
        weights = list(dict.fromkeys(v for v in read if v.is_initializer() and v not in produced))
        inputs = list(dict.fromkeys(v.name for v in read if v not in produced and v not in self._constants
                                    and not v.is_initializer()))
        drop = {n for n, last in self._last_read.items() if last <= index}
        if not computed:
            return StageProgram(index, b"", {}, inputs, [], wanted, drop if not exposed else set())
        initializers, arrays = _initializers(weights)
        graph = onnx.helper.make_graph(
            [ir.serde.serialize_node(node) for node in constants + nodes], f"stage_{index}",
            [self._input_info(name, index) for name in inputs],
            [onnx.helper.make_empty_tensor_value_info(name) for name in computed], initializers)
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in
                                                             self.model.opset_imports.items()])
        proto.ir_version = self.model.ir_version
        proto.functions.extend(ir.serde.serialize_function(f) for f in self.model.functions.values())
        if any(node.domain in LOWERINGS for node in nodes):
            proto = ir.serde.serialize_model(lowered(ir.serde.deserialize_model(proto)))
        return StageProgram(index, proto.SerializeToString(), arrays, inputs, computed, wanted,
                            drop if not exposed else set(), self.threads)

    def _input_info(self, name: str, index: int) -> onnx.ValueInfoProto:
        """A stage input typed like the arrays it receives, every dimension symbolic."""
        if name in self._first:
            dtype, rank = np.asarray(self._first[name]).dtype, np.ndim(self._first[name])
        elif name in self._types:
            dtype, rank = self._types[name]
        else:
            raise CalibrationError(f"stage {index} reads {name!r}, which no earlier stage or graph input provides")
        dims = [f"{name}_{axis}" for axis in range(rank)]
        return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)


@dataclasses.dataclass
class StageProgram:
    """One stage as the workers run it: the model bytes (empty: nothing to compute), the
    weights ONNX Runtime takes as external initializers, the input names, the values computed,
    the values wanted (computed or read), and the kept values to drop after it."""

    index: int
    proto: bytes
    weights: dict[str, np.ndarray]
    inputs: list[str]
    computed: list[str]
    wanted: list[str]
    drop: set[str]
    threads: int | None = None


def _hold_batches(shard: Shard) -> None:
    """A shard keeps, per batch, its feeds and the values kept for later stages."""
    shard.state["live"] = [dict(feeds) for feeds in shard.items]


def _kept_values(shard: Shard, names: list[str]) -> list[list[np.ndarray]]:
    return [[live[name] for name in names] for live in shard.state["live"]]


def _reduce_on_shard(shard: Shard, program: StageProgram, fresh) -> Any:
    """The shard's batches reduced into its own copies of the ``fresh`` reducers."""
    return _run_stage(shard, program, copy.deepcopy(fresh))


def _run_stage(shard: Shard, program: StageProgram, reducers) -> Any:
    """Run ``program`` on the shard's batches. With ``reducers`` ({name: [Reducer]}): stream the
    wanted values into them and return them; else keep the computed values, drop the values no
    later stage reads, and return {name: (dtype, rank)} of what was kept."""
    lives = shard.state["live"]
    session = _session(program) if program.computed else None
    kept: dict[str, tuple[str, int]] = {}
    try:
        for live, feeds in zip(lives, shard.items):
            arrays = _run_one(session, program, live)
            if reducers is not None:
                for name, group in reducers.items():
                    for reducer in group:
                        reducer.update(arrays[name], feeds)
                continue
            live.update(arrays)
            kept.update({n: (a.dtype.str, a.ndim) for n, a in arrays.items()})
            for name in [n for n in live if n in program.drop and n not in feeds]:
                del live[name]
    finally:
        del session
    return reducers if reducers is not None else kept


def _run_one(session, program: StageProgram, live: dict) -> dict[str, np.ndarray]:
    """The wanted values for one batch: computed by the session, or read from ``live``."""
    computed = {}
    if session is not None:
        try:
            outputs = session.run(program.computed, {n: live[n] for n in program.inputs})
        except Exception as exc:  # ORT raises Fail, RuntimeException, InvalidArgument, ...
            raise CalibrationError(f"stage {program.index} failed to run: {one_line(exc)}") from None
        computed = dict(zip(program.computed, outputs))
    return {name: computed[name] if name in computed else live[name] for name in program.wanted}


def _session(program: StageProgram) -> ort.InferenceSession:
    """An ONNX Runtime session of the stage; its large weights handed over as arrays (kept
    alive by ``program`` while the session runs)."""
    options = session_options(program.threads)
    options.enable_cpu_mem_arena = False
    if program.weights:
        options.add_external_initializers(
            list(program.weights), [ort.OrtValue.ortvalue_from_numpy(a) for a in program.weights.values()])
    try:
        return ort.InferenceSession(program.proto, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CalibrationError(f"ONNX Runtime cannot load stage {program.index}: {one_line(exc)}") from None


def _initializers(weights: Sequence[ir.Value]) -> tuple[list[onnx.TensorProto], dict[str, np.ndarray]]:
    """The stage's initializers: small ones inline, large ones declared external with their
    arrays returned (a memory-mapped weight stays a view of its file)."""
    protos, arrays = [], {}
    for value in weights:
        array = _plain_array(value.const_value)
        if array is None or array.nbytes < INLINE_BYTES:
            protos.append(_inline(value))
            continue
        protos.append(_external_placeholder(value.name, array))
        arrays[value.name] = array
    return protos, arrays


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


def _release_mapped(nodes: Sequence[ir.Node]) -> None:
    """Unmap the external-data weights the stage read (they map again if read later)."""
    for value in _stage_reads(nodes):
        if value.is_initializer() and isinstance(value.const_value, ir.ExternalTensor):
            value.const_value.release()
