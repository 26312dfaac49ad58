"""Apache Beam preprocessing: raw CIFAR-10/100, ImageNet and image folders into sharded TFRecords
(`run_preprocess(PreprocessConfig(...))`)."""
import logging


class _DropApitoolsNotice(logging.Filter):
    # Beam's GCP module logs this on the root logger when apache_beam is first imported, whether or not
    # GCP is ever used; every path into apache_beam from here passes this package's import first.
    def filter(self, record):
        return "apitools not found" not in str(record.msg)


logging.getLogger().addFilter(_DropApitoolsNotice())

from revnet.pipeline.preprocess_config import DATASETS, PreprocessConfig  # noqa: E402
from revnet.pipeline.run import default_workers, format_summary, run_preprocess  # noqa: E402

__all__ = ["DATASETS", "PreprocessConfig", "default_workers", "format_summary", "run_preprocess"]
