"""Helpers for the trainer tests that start the real CLI in subprocesses."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def cli_command(*args):
    return [sys.executable, os.path.join(ROOT, "cli.py"), *args]
