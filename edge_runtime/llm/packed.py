"""`PackedMatMul`: fp32 x @ W for steps of several rows, without paying sgemm's packing.

Why: decode reads every weight once per step. For one row numpy's matrix-vector
product runs at the memory bound, but for 2-8 rows (a batch of sequences) numpy goes
through BLAS `sgemm`, which repacks W on every call: on the development machine the
2048 x 11264 gate/up matrix took 3.2 ms at 1 row but 11.7-13.6 ms at 2-8 rows, so
batching gained little. onnxruntime's `MatMul` with W as an initializer packs W once
(MLAS) and then costs 4.2 / 5.1 / 7.0 ms at 1 / 4 / 8 rows. So: one row by numpy, more
by the packed session. W is handed to onnxruntime as an external initializer (no copy
of ours), but its packed copy costs W's size again: a share uses this only when it
batches (`TensorWorker(slots > 1)`) and its memory budget holds both.
"""

from __future__ import annotations

import numpy as np


class PackedMatMul:
    """x [M, K] @ W [K, N]: numpy for one row, onnxruntime's prepacked MatMul for more."""

    def __init__(self, w: np.ndarray) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        self.w = np.ascontiguousarray(w, dtype=np.float32)
        k, n = self.w.shape
        weight = TensorProto()
        weight.name = "W"
        weight.data_type = TensorProto.FLOAT
        weight.dims.extend([k, n])
        weight.data_location = TensorProto.EXTERNAL  # given below, from our array
        location = weight.external_data.add()
        location.key, location.value = "location", "in-memory"
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["y"])],
            "packed",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=10)  # read by every onnxruntime since 1.18
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._value = ort.OrtValue.ortvalue_from_numpy(self.w)  # must outlive the session
        options.add_external_initializers(["W"], [self._value])
        self._session = ort.InferenceSession(model.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        self.shape = (k, n)
        self.packed_bytes = self.w.nbytes  # onnxruntime's packed copy, about W's size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 1:
            out: np.ndarray = x @ self.w
            return out
        result: np.ndarray = self._session.run(
            None, {"x": np.ascontiguousarray(x, np.float32)})[0]
        return result


__all__ = ["PackedMatMul"]
