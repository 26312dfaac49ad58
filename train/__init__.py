"""Training and evaluation: `train.run(...)` trains or resumes an experiment, `train.evaluate(...)`
evaluates its checkpoints. Both import TensorFlow lazily, so a caller can configure devices first."""


def run(**options):
    """Train (or resume) WORKDIR/ID; see `train.trainer.run` for the options. Returns a summary dict."""
    from revnet.train.trainer import run as _run

    return _run(**options)


def evaluate(**options):
    """Evaluate an experiment's checkpoints; see `train.evaluator.evaluate`. Returns the last result dict."""
    from revnet.train.evaluator import evaluate as _evaluate

    return _evaluate(**options)
