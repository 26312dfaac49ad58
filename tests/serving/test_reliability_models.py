"""What the server loads and what `export` and `preprocess` may write (issue 10 items 1, 7, 8, 10, 12, 13):
the highest version that loads is served and a broken one is logged once; a file that does not match
its export.json SHA-256 is never served; --overwrite replaces only an earlier export or an empty folder;
versions are claimed atomically; names stay inside --output; preprocessing rejects a decompression bomb."""
import json
import logging
import os
import shutil
import threading

import pytest

from revnet.common.errors import UserError
from testkit.reliability_helpers import png_bomb


def copy_version(serving_env, model_dir, version):
    shutil.copytree(os.path.join(serving_env["model_dir"], "1"), os.path.join(model_dir, str(version)))
    record_path = os.path.join(model_dir, str(version), "export.json")
    return record_path


def truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def flip_byte(path, offset_fraction=0.6):
    with open(path, "r+b") as handle:
        handle.seek(int(os.path.getsize(path) * offset_fraction))
        value = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([value ^ 0x01]))


# --- Version loading (item 7) -----------------------------------------------------------------------

def test_the_highest_version_that_loads_is_served_and_a_broken_one_is_logged_once(serving_env, tmp_path, caplog):
    from revnet.serving.repository import ModelRepository

    model_dir = str(tmp_path / "revnet")
    for version in (1, 2, 3):
        copy_version(serving_env, model_dir, version)
    truncate(os.path.join(model_dir, "3", "model.onnx"))
    caplog.set_level(logging.INFO, logger="revnet")
    repository = ModelRepository(model_dir, "onnx")  # starts although the newest version is broken
    assert repository.current().version == 2
    for _ in range(3):
        repository.poll()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "version 3" in errors[0].getMessage()
    copy_version(serving_env, model_dir, 4)  # a good version after the broken one is still picked up
    repository.poll()
    assert repository.current().version == 4
    restarted = ModelRepository(model_dir, "onnx")
    assert restarted.current().version == 4


def test_a_version_folder_that_is_not_an_export_is_logged_once(serving_env, tmp_path, caplog):
    """`7 -> a folder without a model` (a symlink to /etc, say) is ignored with one warning naming the link's
    target, however often the folder is polled; pointing it at a real export makes it served."""
    from revnet.serving.repository import ModelRepository

    model_dir = str(tmp_path / "revnet")
    copy_version(serving_env, model_dir, 1)
    elsewhere = tmp_path / "not-an-export"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("no model here")
    os.symlink(str(elsewhere), os.path.join(model_dir, "7"))
    caplog.set_level(logging.INFO, logger="revnet")
    repository = ModelRepository(model_dir, "onnx")
    for _ in range(4):
        repository.poll()
    warnings = [r.getMessage() for r in caplog.records if "not an export" in r.getMessage()]
    assert len(warnings) == 1 and "link to" in warnings[0] and "not-an-export" in warnings[0], warnings
    assert repository.current().version == 1
    os.remove(os.path.join(model_dir, "7"))
    copy_version(serving_env, str(tmp_path / "elsewhere"), 7)
    os.symlink(str(tmp_path / "elsewhere" / "7"), os.path.join(model_dir, "7"))
    repository.poll()
    assert repository.current().version == 7


def test_a_repaired_version_is_retried_and_nothing_loadable_is_a_clear_error(serving_env, tmp_path):
    from revnet.serving.repository import ModelRepository

    model_dir = str(tmp_path / "revnet")
    copy_version(serving_env, model_dir, 1)
    copy_version(serving_env, model_dir, 2)
    truncate(os.path.join(model_dir, "2", "model.onnx"))
    repository = ModelRepository(model_dir, "onnx")
    assert repository.current().version == 1
    shutil.copy(os.path.join(serving_env["model_dir"], "1", "model.onnx"), os.path.join(model_dir, "2", "model.onnx"))
    repository.poll()
    assert repository.current().version == 2
    truncate(os.path.join(model_dir, "1", "model.onnx"))
    truncate(os.path.join(model_dir, "2", "model.onnx"))
    with pytest.raises(UserError, match="no version folder .* that loads .*version 2: .*version 1: "):
        ModelRepository(model_dir, "onnx")


# --- Integrity (item 8) -----------------------------------------------------------------------------

def test_export_records_the_sha256_of_every_artefact(serving_env):
    from revnet.serving.layout import file_sha256

    version_dir = os.path.join(serving_env["model_dir"], "1")
    with open(os.path.join(version_dir, "export.json")) as handle:
        recorded = json.load(handle)["sha256"]
    on_disk = sorted(os.path.relpath(os.path.join(root, name), version_dir)
                     for root, _, names in os.walk(version_dir) for name in names)
    assert sorted(recorded) == [name for name in on_disk if name != "export.json"]
    assert {"model.onnx", "saved_model.pb", "labels.txt", "assets/labels.txt"} <= set(recorded)
    assert all(file_sha256(os.path.join(version_dir, name)) == digest for name, digest in recorded.items())


@pytest.mark.parametrize("backend,artefact", [("onnx", "model.onnx"), ("onnx", "labels.txt"),
                                              ("tf", "variables/variables.data-00000-of-00001")])
def test_a_flipped_byte_is_never_served(serving_env, tmp_path, backend, artefact):
    from revnet.serving.repository import ModelRepository

    model_dir = str(tmp_path / "revnet")
    copy_version(serving_env, model_dir, 1)
    copy_version(serving_env, model_dir, 2)
    flip_byte(os.path.join(model_dir, "2", artefact))
    repository = ModelRepository(model_dir, backend)
    assert repository.current().version == 1  # version 2 refused, the good version 1 served
    shutil.rmtree(os.path.join(model_dir, "1"))
    with pytest.raises(UserError, match=f"{artefact}.* not matching the SHA-256 recorded in export.json"):
        ModelRepository(model_dir, backend)


# --- Export: names, versions, --overwrite (items 10, 12, 13) ----------------------------------------

@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".", ".hidden", "back\\slash", "nul\0"])
def test_model_names_are_single_path_components(serving_env, tmp_path, name):
    from revnet.serving.exporter import export

    output = tmp_path / "exports"
    with pytest.raises(UserError, match="must be a single folder name"):
        export(exp_id="exp1", workdir=serving_env["workdir"], output=str(output), format="onnx", name=name)
    assert not os.path.exists(tmp_path / "escape") and not os.path.exists(output)


def test_overwrite_refuses_a_folder_that_export_did_not_write(serving_env, tmp_path):
    from revnet.serving.exporter import export

    version_dir = tmp_path / "exports" / "revnet" / "1"
    (version_dir / "photos").mkdir(parents=True)
    (version_dir / "thesis.txt").write_text("four years of work")
    (version_dir / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    (version_dir / "export.json").write_text("not an export record")
    before = sorted(str(p) for p in version_dir.rglob("*"))
    with pytest.raises(UserError, match="refusing to overwrite .*not an export written by `export`"):
        export(exp_id="exp1", workdir=serving_env["workdir"], output=str(tmp_path / "exports"), format="onnx",
               name="revnet", version=1, overwrite=True)
    assert sorted(str(p) for p in version_dir.rglob("*")) == before
    assert (version_dir / "thesis.txt").read_text() == "four years of work"
    assert sorted(os.listdir(tmp_path / "exports" / "revnet")) == ["1"]  # no staging left behind


def test_overwrite_replaces_an_earlier_export_and_new_versions_skip_claimed_folders(serving_env, tmp_path):
    from revnet.serving.exporter import export

    model_dir = tmp_path / "exports" / "revnet"
    copy_version(serving_env, str(model_dir), 1)
    old_record = json.loads((model_dir / "1" / "export.json").read_text())
    (model_dir / "1" / "stale.txt").write_text("written by an earlier export run")
    record = export(exp_id="exp1", workdir=serving_env["workdir"], output=str(tmp_path / "exports"),
                    format="savedmodel", name="revnet", version=1, overwrite=True)
    assert record["version"] == 1 and record["format"] == "savedmodel" and old_record["format"] == "all"
    assert sorted(os.listdir(model_dir / "1")) == sorted(["assets", "assets.extra", "export.json", "fingerprint.pb",
                                                          "saved_model.pb", "variables"])
    (model_dir / "2").mkdir()  # claimed by a concurrent export that is still running
    record = export(exp_id="exp1", workdir=serving_env["workdir"], output=str(tmp_path / "exports"),
                    format="savedmodel", name="revnet")
    assert record["version"] == 3 and os.listdir(model_dir / "2") == []


def test_concurrent_version_claims_never_collide(tmp_path):
    from revnet.serving.exporter import reserve_version

    model_dir, claims, barrier = str(tmp_path / "revnet"), [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claims.append(reserve_version(model_dir, None, overwrite=False))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(version for version, _, reserved in claims) == list(range(1, 9))
    assert all(reserved for _, _, reserved in claims)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        reserve_version(model_dir, 3, overwrite=False)
    assert reserve_version(model_dir, 3, overwrite=True) == (3, os.path.join(model_dir, "3"), False)  # empty: ok


# --- Preprocessing (item 1) -------------------------------------------------------------------------

def test_preprocess_rejects_a_decompression_bomb_into_rejects_jsonl(tmp_path):
    from revnet.pipeline import PreprocessConfig, run_preprocess
    from revnet.preprocess.fake_data import write_imagenet_tree

    root = str(tmp_path / "imagenet")
    info = write_imagenet_tree(root, num_classes=2, train_per_class=3, val_per_class=1, specials=False, seed=3)
    bomb = os.path.join(root, "train", info["synsets"][0], f"{info['synsets'][0]}_bomb.JPEG")
    with open(bomb, "wb") as handle:
        handle.write(png_bomb(7000, 6000))  # 42 MP: over the 40 MP default, 126 MB if it were decoded
    output = str(tmp_path / "out")
    metadata = run_preprocess(PreprocessConfig("imagenet", output, input_path=root, train_shards=1, val_shards=1,
                                               workers=1, max_reject_fraction=0.5))
    assert metadata["splits"]["train"]["rejected"] == 1
    rejects = [json.loads(line) for line in open(os.path.join(output, "rejects.jsonl"))]
    assert [r["path"] for r in rejects] == [bomb]
    assert "7000x6000 = 42,000,000 pixels exceeds the limit of 40,000,000" in rejects[0]["reason"]
