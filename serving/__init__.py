"""Export (SavedModel in TF-Serving layout, ONNX) and a gRPC server speaking TF Serving's API.

Entry points: `revnet.serving.exporter.export`, `revnet.serving.server.serve` (blocking) and
`start_server` (an in-process handle with `.port`, `.rest_port` and `.stop()`), and
`revnet.serving.client.predict` (the client).
"""
