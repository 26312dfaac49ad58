"""Export (SavedModel in TF-Serving layout, ONNX) and a gRPC server speaking TF Serving's API.

Entry points: `export(...)`, `serve(...)` (blocking), `start_server(...)` (in-process handle with
`.port`, `.rest_port` and `.stop()`), `predict(...)` (the client).
"""


def export(**options):
    from revnet.serving.exporter import export as run_export

    return run_export(**options)


def serve(**options):
    from revnet.serving.server import serve as run_serve

    return run_serve(**options)


def start_server(**options):
    from revnet.serving.server import start_server as run_start

    return run_start(**options)


def predict(**options):
    from revnet.serving.client import predict as run_predict

    return run_predict(**options)
