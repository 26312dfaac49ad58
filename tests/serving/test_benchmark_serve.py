"""The serving benchmark's report: every configuration once, sane figures, targets computed from the rows."""
import pytest

from revnet.benchmarks.serve import FIELDS, format_report, run_serve_benchmark, targets

@pytest.mark.slow  # starts servers and a client process per configuration
def test_serve_benchmark_report(serving_env):
    report = run_serve_benchmark(model_dir=serving_env["model_dir"], concurrency=[1, 3], backends=["onnx"],
                                 requests_per_client=3, in_process_seconds=0.1, profile=True)
    rows = report["rows"]
    # The shared fixture's export has no int8 model, so the int8 rows are left out, not faked.
    assert [(r["backend"], r["path"], r["batching"], r["clients"], r["batch"]) for r in rows] == [
        ("onnx", "in-process", "-", 1, 1), ("onnx", "in-process", "-", 1, 32),
        ("onnx", "grpc", "off", 1, 1), ("onnx", "grpc", "off", 3, 1), ("onnx", "grpc", "on", 1, 1),
        ("onnx", "grpc", "on", 3, 1), ("onnx", "in-process", "at grpc mean batch", 1, rows[-1]["batch"])]
    for row in rows:
        assert set(row) == set(FIELDS) and row["req_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert rows[3]["requests"] == 9 and rows[3]["mean_batch_rows"] == 1.0  # no batching: one row per run
    assert rows[-1]["batch"] == max(1, round(rows[5]["mean_batch_rows"]))
    by_name = {t["target"]: t for t in report["targets"]}
    overhead = by_name["onnx gRPC 3 clients batched / in-process at its mean batch"]
    assert overhead["measured"] == round(rows[5]["images_per_s"] / rows[-1]["images_per_s"], 2)
    assert by_name["ORT fp32 batch-1 p50 latency / TF's"]["met"] == "-"  # TF was not measured in this run
    profile = [p for p in report["profile"] if p["model"] == "model.onnx"]
    assert profile[0]["op"] == "(all)" and any(p["op"] == "Conv" for p in profile)
    text = format_report(report)
    assert "req_per_s" in text and "target" in text and "ms_per_run" in text


def test_targets_compare_the_right_rows():
    def row(backend, path, batch, images_per_s, p50, p99=None, batching="-", clients=1):
        return {"backend": backend, "path": path, "batching": batching, "clients": clients, "batch": batch,
                "images_per_s": images_per_s, "p50_ms": p50, "p99_ms": p99 or p50}

    rows = [row("onnx", "in-process", 1, 500, 2.0), row("tf", "in-process", 1, 200, 5.0),
            row("onnx", "in-process", 32, 1300, 25), row("tf", "in-process", 32, 1000, 32),
            row("onnx-int8", "in-process", 32, 2600, 12),
            row("onnx", "grpc", 1, 300, 20, 70, "on", 8), row("onnx", "grpc", 1, 700, 40, 50, "on", 32),
            row("onnx", "in-process", 20, 1000, 20, batching="at grpc mean batch")]
    record = {"onnx": {"int8": {"top1_agreement_with_float": 0.985,
                                "evaluation_images": {"count": 800, "source": "validation:/d"}}}}
    got = {t["target"]: (t["measured"], t["met"]) for t in targets(rows, record, 32)}
    assert got["ORT fp32 batch-1 p50 latency / TF's"] == (0.4, "yes")
    assert got["ORT fp32 batch-32 images/s / TF's"] == (1.3, "yes")
    assert got["ORT int8 batch-32 images/s / fp32's"] == (2.0, "yes")
    assert got["int8 top-1 agreement (800 validation images, export.json)"] == (0.985, "NO")
    assert got["onnx gRPC 32 clients batched / in-process at its mean batch"] == (0.7, "NO")
    assert got["onnx gRPC 8 clients batched p99 / p50"] == (3.5, "NO")
    assert got["tf gRPC 8 clients batched p99 / p50"] == (None, "-")
