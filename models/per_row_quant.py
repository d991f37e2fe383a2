"""Per-row dynamic int8 quantization of MatMuls, as a plain ONNX graph rewrite (no custom ops).

onnxruntime's ``quantize_dynamic`` inserts ``DynamicQuantizeLinear``, whose single scale covers the whole input
tensor: in a batch, one face's activations set the scale of all the others, so answers depend on batch
neighbours. Here every MatMul with a constant 2-D weight becomes

    s = max(|x|, axis=-1) / 127                       (one scale per row, i.e. per token of each face)
    y = MatMulInteger(uint8(round(x / s) + 128), W_q, 128) * s * w_scale

with ``W_q`` symmetric int8 per output column. Rows never share a scale, so the result is batch-invariant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def rewrite_per_row(src: Path, dst: Path, min_weight_elements: int = 1024) -> int:
    """Write ``src`` with per-row int8 MatMuls to ``dst``; returns how many MatMuls were rewritten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:
        raise ValueError(f"{src}: opset {opset} < 18 (ReduceMax with an axes input is needed)")
    shared = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "per_row_axes"),
        numpy_helper.from_array(np.array(1e-8, dtype=np.float32), "per_row_eps"),
        numpy_helper.from_array(np.array(127.0, dtype=np.float32), "per_row_qmax"),
        numpy_helper.from_array(np.array(128.0, dtype=np.float32), "per_row_zp_f"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "per_row_zp"),
    ]
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or int(np.prod(w.dims)) < min_weight_elements:
            nodes.append(node)
            continue
        rewritten += 1
        p = f"{node.name or node.output[0]}/per_row"
        wf = numpy_helper.to_array(w).astype(np.float32)
        w_scale = np.maximum(np.abs(wf).max(axis=0), 1e-12) / 127.0
        w_q = np.clip(np.round(wf / w_scale), -127, 127).astype(np.int8)
        graph.initializer.extend(
            [
                numpy_helper.from_array(w_q, f"{p}/w_q"),
                numpy_helper.from_array(w_scale.astype(np.float32), f"{p}/w_scale"),
            ]
        )
        x, y = node.input[0], node.output[0]
        nodes += [
            helper.make_node("Abs", [x], [f"{p}/abs"]),
            helper.make_node("ReduceMax", [f"{p}/abs", "per_row_axes"], [f"{p}/max"], keepdims=1),
            helper.make_node("Max", [f"{p}/max", "per_row_eps"], [f"{p}/max_eps"]),
            helper.make_node("Div", [f"{p}/max_eps", "per_row_qmax"], [f"{p}/s"]),
            helper.make_node("Div", [x, f"{p}/s"], [f"{p}/xs"]),
            helper.make_node("Round", [f"{p}/xs"], [f"{p}/xr"]),
            # uint8 activations around zero point 128: MLAS has fast u8s8 kernels, s8s8 MatMulInteger is slow.
            helper.make_node("Add", [f"{p}/xr", "per_row_zp_f"], [f"{p}/xz"]),
            helper.make_node("Cast", [f"{p}/xz"], [f"{p}/x_q"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [f"{p}/x_q", f"{p}/w_q", "per_row_zp"], [f"{p}/y_i"]),
            helper.make_node("Cast", [f"{p}/y_i"], [f"{p}/y_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}/y_f", f"{p}/s"], [f"{p}/y_s"]),
            helper.make_node("Mul", [f"{p}/y_s", f"{p}/w_scale"], [y]),
        ]
    used = {name for n in nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [s for s in shared if rewritten])
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return rewritten
