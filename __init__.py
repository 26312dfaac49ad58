"""revnet: Reversible Residual Networks (Gomez, Ren, Urtasun, Grosse, NIPS 2017) on TensorFlow 2.

The repository root is this package (setup.cfg maps it with `package_dir`), so the folders stay where
the product's layout puts them and install as one import root:

    revnet.common       errors, atomic files, device set-up, storage paths
    revnet.models       the model registry, ResNet/RevNet and the reversible stack
    revnet.preprocess   image checks, the TFRecord schema, dataset readers, the tf.data input pipeline
    revnet.pipeline     the Apache Beam preprocessing job
    revnet.train        the tf.distribute trainer and evaluator
    revnet.serving      export (SavedModel, ONNX) and the TF-Serving-API server
    revnet.benchmarks   memory, preprocessing, training and serving benchmarks
    revnet.demo, revnet.cli   the end-to-end demo and the command line, on top

Packages import downwards only, in that order (tests/test_layering.py checks it).
"""
