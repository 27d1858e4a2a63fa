import json

import pytest
from conftest import SHARED_DATA
from transformers import AutoTokenizer

from codefusion_hf import train_code_tokenizer

TRAIN_FILES = sorted(SHARED_DATA.glob("*/train.jsonl"))


def read_code(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["code"] for line in f]


@pytest.mark.skipif(not TRAIN_FILES, reason=f"the shared benchmark data is not at {SHARED_DATA}")
def test_round_trip_on_every_training_snippet():
    codes = [code for path in TRAIN_FILES for code in read_code(path)]
    assert len(codes) > 10_000
    tokenizer = train_code_tokenizer(codes[::5], vocab_size=2000)
    encoded = tokenizer(codes, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(encoded)
    broken = [(code, text) for code, text in zip(codes, decoded) if code != text]
    assert broken == []


def test_whitespace_quotes_and_newlines_survive(tmp_path):
    samples = ["find . -name '*.py'", 'echo "a  b"\tc', "def f(x):\n    return x\n\n", "  leading and trailing  "]
    tokenizer = train_code_tokenizer(samples * 3, vocab_size=300, min_frequency=1)
    for text in samples:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.decode(reloaded("find .")["input_ids"]) == "find ."


def test_special_tokens_follow_codet5_ids():
    tokenizer = train_code_tokenizer(["ls -la"], vocab_size=300)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokenizer.special_tokens_map.items()}
    assert ids == {"bos_token": 0, "pad_token": 1, "eos_token": 2, "unk_token": 3, "mask_token": 4}
    assert tokenizer("ls")["input_ids"][0] not in ids.values()  # no special tokens wrapped around code


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        train_code_tokenizer(["ls"], vocab_size=100)
