"""The run-keeping of checkpoints (training_checkpoints_codefusion) on its own; the trainer's saves and resumes that
use it are tested in test_training.py."""

import errno
import shutil
from types import SimpleNamespace

from codefusion_hf.training_checkpoints_codefusion import full_disk_error, is_disk_full, publish_staged, staging_paths


def test_writer_errors_on_a_full_disk_count_as_a_full_disk(tmp_path, monkeypatch):
    """torch.save and safetensors raise their own errors on a full disk (as measured on a full tmpfs): a save that
    fails while the disk has no space left is a full disk, one that fails with space left is not."""
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 110400 vs 110292")
    assert not is_disk_full(torch_error, str(tmp_path))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), str(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=4096))
    assert is_disk_full(torch_error, str(tmp_path))


def test_full_disk_error_names_the_checkpoint_and_the_fix(tmp_path, monkeypatch):
    checkpoint = str(tmp_path / "checkpoint-4")
    assert full_disk_error(RuntimeError("a bug"), checkpoint) is None  # space left: not the disk's fault
    error = full_disk_error(OSError(errno.ENOSPC, "No space left on device"), checkpoint)
    assert error.errno == errno.ENOSPC
    assert f"to save checkpoint-4 in {tmp_path} (" in str(error) and "choose another output_dir" in str(error)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    assert full_disk_error(RuntimeError("unexpected pos"), checkpoint) is not None


def test_a_staged_checkpoint_is_published_in_place_of_an_old_folder(tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    staging_dir, staged = staging_paths(str(checkpoint))
    assert (staging_dir, staged) == (f"{checkpoint}.tmp", str(tmp_path / "checkpoint-2.tmp" / "checkpoint-2"))
    (tmp_path / "checkpoint-2.tmp" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoint-2.tmp" / "checkpoint-2" / "model.safetensors").write_text("new")
    checkpoint.mkdir()  # a damaged one left by an earlier run
    (checkpoint / "model.safetensors").write_text("damaged")
    publish_staged(str(checkpoint))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert (checkpoint / "model.safetensors").read_text() == "new"
