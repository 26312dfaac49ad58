"""`benchmark finetune`: the generated shape tasks are what they claim, and one tiny run gives a row per way of
training, each evaluated on the whole target validation split."""
import numpy as np
import pytest

from revnet.benchmarks.finetune import SOURCE_SHAPES, TARGET_SHAPES, draw_shape, format_report, write_shape_folder


def test_every_shape_draws_and_the_tasks_share_no_class(tmp_path):
    assert not set(SOURCE_SHAPES) & set(TARGET_SHAPES)
    for shape in SOURCE_SHAPES + TARGET_SHAPES:
        image = np.asarray(draw_shape(shape, np.random.default_rng(0)))
        assert image.shape == (64, 64, 3) and image.std() > 10, shape
    with pytest.raises(ValueError, match="unknown shape"):
        draw_shape("hexagon", np.random.default_rng(0))
    write_shape_folder(str(tmp_path), ["star", "circle"], {"train": 3, "val": 1}, seed=1)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["circle", "star"]
    assert len(list((tmp_path / "train" / "star").iterdir())) == 3 and len(list((tmp_path / "val").iterdir())) == 2


@pytest.mark.slow
def test_a_tiny_run_reports_three_evaluated_rows():
    from revnet.benchmarks.finetune import run_finetune_benchmark

    report = run_finetune_benchmark(model="resnet-32", pretrain_steps=2, steps=2, batch_size=8, source_per_class=4,
                                    target_per_class=3, val_per_class=5)
    assert [row["options"] for row in report["rows"]] == ["", "--init-from source",
                                                          "--init-from source --freeze all-but-head"]
    assert all(row["examples"] == 5 * len(TARGET_SHAPES) and 0 <= row["top1"] <= 1 for row in report["rows"])
    assert "fine-tuned, all but the head frozen" in format_report(report)
