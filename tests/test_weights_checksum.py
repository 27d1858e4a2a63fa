import hashlib
import re
from pathlib import Path

import pytest
import torch
from conftest import flip_tensor_byte
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from codefusion_hf import CodeFusionModel
from codefusion_hf.weights_checksum_codefusion import (
    CHECKSUM_KEY,
    check_checksum,
    read_header,
    record_checksum,
    saved_weight_files,
    stale_weight_files,
)

TENSORS = {"b.weight": torch.arange(12.0).view(3, 4), "a.bias": torch.ones(5, dtype=torch.bfloat16)}


def saved(path: Path) -> Path:
    save_file(TENSORS, path, metadata={"format": "pt"})
    return path


def test_the_recorded_checksum_is_the_sha256_of_the_tensor_data_and_the_file_still_loads(tmp_path):
    path = saved(tmp_path / "model.safetensors")
    record_checksum(str(path))
    with open(path, "rb") as f:
        header, offset = read_header(f)
    assert offset % 8 == 0  # safetensors' alignment of the data
    data = path.read_bytes()[offset:]
    assert header["__metadata__"] == {"format": "pt", CHECKSUM_KEY: hashlib.sha256(data).hexdigest()}
    with safe_open(path, "pt") as f:
        assert f.metadata()[CHECKSUM_KEY] == hashlib.sha256(data).hexdigest()
    loaded = load_file(path)
    assert loaded.keys() == TENSORS.keys() and all(torch.equal(loaded[k], TENSORS[k]) for k in TENSORS)
    check_checksum(str(path))  # intact: no error
    assert not (tmp_path / "model.safetensors.tmp").exists()


def test_a_flipped_byte_is_refused_naming_the_file_and_a_file_without_checksum_is_not_checked(tmp_path):
    path = saved(tmp_path / "model.safetensors")
    flip_tensor_byte(path)
    check_checksum(str(path))  # saved without a checksum (e.g. by transformers itself): nothing to compare
    record_checksum(str(path))
    flip_tensor_byte(path)
    with pytest.raises(OSError, match=f"{path} is damaged: the sha256 of its tensor data"):
        check_checksum(str(path))


def test_saved_weight_files_finds_the_single_file_the_variant_or_the_shards(tiny_model, tmp_path):
    assert saved_weight_files(str(tmp_path)) == []
    saved(tmp_path / "model.fp16.safetensors")
    assert saved_weight_files(str(tmp_path), "fp16") == [str(tmp_path / "model.fp16.safetensors")]
    assert saved_weight_files(str(tmp_path)) == []
    tiny_model.save_pretrained(tmp_path / "sharded", variant="fp16", max_shard_size="100KB")
    shards = saved_weight_files(str(tmp_path / "sharded"), "fp16")  # listed by model.safetensors.index.fp16.json
    assert len(shards) > 1 and all(re.fullmatch(r"model\.fp16-\d+-of-\d+\.safetensors", Path(s).name) for s in shards)
    for path in shards:
        with safe_open(path, "pt") as f:
            assert len(f.metadata()[CHECKSUM_KEY]) == 64


def test_stale_weight_files_are_the_earlier_saves_of_the_same_variant(tmp_path):
    for name in ["model.safetensors", "model.fp16.safetensors", "model-00001-of-00002.safetensors", "config.json"]:
        (tmp_path / name).write_text("")
    written = {"model-00001-of-00003.safetensors", "model.safetensors.index.json", "config.json"}
    assert stale_weight_files(str(tmp_path), written) == [
        str(tmp_path / "model-00001-of-00002.safetensors"),
        str(tmp_path / "model.safetensors"),
    ]  # the fp16 variant's weights and files of another name stay
    assert stale_weight_files(str(tmp_path), {"config.json"}) == []


def test_a_saved_model_carries_the_checksum_in_every_shard(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "single")
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shards = saved_weight_files(str(tmp_path / "sharded"))
    assert len(shards) > 1
    for path in [tmp_path / "single" / "model.safetensors", *shards]:
        with safe_open(path, "pt") as f:
            assert len(f.metadata()[CHECKSUM_KEY]) == 64
    flip_tensor_byte(Path(shards[-1]))
    with pytest.raises(OSError, match=f"{shards[-1]} is damaged"):
        CodeFusionModel.from_pretrained(tmp_path / "sharded")
    loaded = CodeFusionModel.from_pretrained(tmp_path / "single")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values()))
