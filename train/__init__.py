"""Training and evaluation: `revnet.train.trainer.run` trains or resumes an experiment,
`revnet.train.evaluator.evaluate` evaluates its checkpoints, `revnet.train.train_config.TrainConfig` holds every
training option and the paper's recipes. Importing this package does not import TensorFlow, so a caller
can configure devices first."""
