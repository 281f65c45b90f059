"""Reading the QNN EP's verbose validation log (no HTP needed: canned onnxruntime 1.32 output)."""

from __future__ import annotations

from modelquant.backends.npu import _failed_verdicts, _original_name, _qnn_api_from_log

# Shortened from a real verbose log of a QOperator digits model (onnxruntime-qnn 2.7).
LOG = """\
2026-11-23 07:50:29.645 [V:onnxruntime:, qnn_execution_provider.cc:2198 GetCapabilityImpl] \
GetCapability pass 1 (pre-Layout-Transform; post-LT-gated fusions dormant)
2026-11-23 07:50:29.781 [V:onnxruntime:, qnn_backend_manager.cc:261 GetQnnInterfaceProvider] \
libQnnHtp.so interface version: 2.40.0
2026-11-23 07:50:29.788 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] \
Validation PASSED for 1 nodes in OrtNodeUnit (MaxPool) :
\tOperator type: MaxPool Node name: /features/features.2/MaxPool Node index: 2
2026-11-23 07:50:29.788 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] \
Validation FAILED for 1 nodes in OrtNodeUnit (QGemm) :
\tOperator type: QGemm Node name: /classifier/classifier.1/Gemm_quant Node index: 4
\tREASON : Operators of type `QGemm` are not supported by QNN EP.

2026-11-23 07:50:29.789 [V:onnxruntime:, qnn_execution_provider.cc:2198 GetCapabilityImpl] \
GetCapability pass 2 (post-Layout-Transform; post-LT-gated fusions enabled)
2026-11-23 07:50:29.790 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] \
Validation FAILED for 1 nodes in OrtNodeUnit (MaxPool) :
\tOperator type: MaxPool Node name: /features/features.2/MaxPool_token_1 Node index: 9
\tREASON : Failed to add node.

 name=/features/features.2/MaxPool_token_1 id=0 version=1 type=QNN_TENSOR_TYPE_NATIVE
2026-11-23 07:50:29.790 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] \
Validation FAILED for 3 nodes in OrtNodeUnit (Erf) :
\tOperator type: DequantizeLinear Node name: a_DequantizeLinear Node index: 11
\tOperator type: Erf Node name: /Erf Node index: 12
\tOperator type: QuantizeLinear Node name: /Erf_output_0_QuantizeLinear Node index: 13
\tREASON : Operators of type `Erf` are not supported by QNN EP.
2026-11-23 07:50:29.790 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] \
Validation PASSED for 1 nodes in OrtNodeUnit (Flatten) :
\tOperator type: Flatten Node name: /Flatten Node index: 15
"""


def test_last_capability_pass_is_the_verdict() -> None:
    verdicts = _failed_verdicts(LOG)
    assert verdicts == {
        "/features/features.2/MaxPool_token_1": ("MaxPool", "Failed to add node."),
        "a_DequantizeLinear": (
            "DequantizeLinear",
            "Operators of type `Erf` are not supported by QNN EP.",
        ),
        "/Erf": ("Erf", "Operators of type `Erf` are not supported by QNN EP."),
        "/Erf_output_0_QuantizeLinear": (
            "QuantizeLinear",
            "Operators of type `Erf` are not supported by QNN EP.",
        ),
    }
    assert _failed_verdicts("no capability pass here") == {}
    assert _qnn_api_from_log(LOG) == "2.40.0"


def test_layout_pass_names_map_back_to_the_model() -> None:
    order = {"/features/features.2/MaxPool": (2, "MaxPool"), "/Erf": (3, "Erf")}
    assert _original_name("/features/features.2/MaxPool_token_1", order) == (
        "/features/features.2/MaxPool"
    )
    assert _original_name("/Erf", order) == "/Erf"
    assert _original_name("Transpose_token_0", order) is None  # inserted by onnxruntime
