"""`demo --overwrite` replaces only a demo's own files (issue 10 item 10), checked before any stage runs."""
import pytest

from revnet.common.errors import UserError
from revnet.demo import run_demo

SMALL = dict(steps=1, num_train=10, num_val=10, batch_size=2, cpu_replicas=2, predict_requests=1, min_accuracy=0,
             measure_memory=False)


def test_overwrite_refuses_a_workdir_holding_other_files(tmp_path):
    (tmp_path / "thesis.txt").write_text("four years of work")
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="holds 'thesis.txt', which the demo does not write"):
        run_demo(workdir=str(tmp_path), overwrite=True, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "thesis.txt"]
    assert (tmp_path / "thesis.txt").read_text() == "four years of work"


def test_a_previous_demo_needs_overwrite(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError, match="already holds an unfinished demo; pass --overwrite"):
        run_demo(workdir=str(tmp_path), **SMALL)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a finished demo; pass --overwrite"):
        run_demo(workdir=str(tmp_path), **SMALL)
