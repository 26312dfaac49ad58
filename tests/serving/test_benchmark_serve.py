"""The serving benchmark returns one row per configuration, with sane figures (tiny request counts)."""
from revnet.benchmarks.serve import FIELDS, format_rows, run_serve_benchmark


def test_serve_benchmark_rows(serving_env):
    rows = run_serve_benchmark(model_dir=serving_env["model_dir"], concurrency=[1, 3], backends=["onnx"],
                               requests_per_client=3, raw_requests=4)
    assert [(r["path"], r["batching"], r["clients"], r["batch"]) for r in rows] == [
        ("in-process", "-", 1, 1), ("in-process", "-", 1, 32), ("grpc", "off", 1, 1), ("grpc", "off", 3, 1),
        ("grpc", "on", 1, 1), ("grpc", "on", 3, 1)]
    for row in rows:
        assert set(row) == set(FIELDS) and row["req_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert rows[3]["requests"] == 9 and rows[3]["mean_batch_rows"] == 1.0  # no batching: one row per run
    assert "req_per_s" in format_rows(rows).splitlines()[0]
