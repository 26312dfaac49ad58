"""Readers of the raw formats `preprocess` turns into TFRecords: the CIFAR archives, the ImageNet tree
and folders of one's own images. They list and check inputs; `pipeline/` runs the job."""
