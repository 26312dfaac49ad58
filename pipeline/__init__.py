"""Apache Beam preprocessing: raw CIFAR-10/100 and ImageNet into sharded TFRecords (`run_preprocess`)."""
from revnet.pipeline.run import DATASETS, DEFAULT_SHARDS, format_summary, run_preprocess

__all__ = ["DATASETS", "DEFAULT_SHARDS", "format_summary", "run_preprocess"]
