"""Training data: loading (prompt, code) files, tokenizing onto the canvas, CPD masking and the collators."""

import pytest
import torch
from conftest import PAIRS, write_jsonl
from datasets import Dataset

from codefusion_hf import data_codefusion
from codefusion_hf.data_codefusion import (
    ENCODER_STATES_COLUMN,
    CodeFusionPretrainingCollator,
    add_encoder_states,
    load_code_dataset,
    mask_code,
    mask_spans,
    tokenize_dataset,
)


def code_dataset(tokenizer, repeat=4):
    return tokenize_dataset(Dataset.from_dict({"code": [c for _, c in PAIRS] * repeat}), tokenizer, 16)


def test_encoder_states_encode_each_distinct_prompt_once(tiny_model, code_tokenizer):
    """Distilled data repeats each prompt with another target: the frozen encoder runs once per distinct prompt,
    and every row gets the states of its own prompt, as encoding it alone gives them."""
    prompts = ["list all files", "list all files", "show disk usage", "list all files", "count lines in a.txt"]
    rows = Dataset.from_dict({"prompt": prompts, "code": ["ls"] * len(prompts)})
    data = tokenize_dataset(rows, code_tokenizer, 16, prompt_tokenizer=code_tokenizer)
    encoded_rows = []
    tiny_model.encoder.register_forward_hook(
        lambda module, args, kwargs, output: encoded_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    states = add_encoder_states(data, tiny_model.encoder, code_tokenizer)[ENCODER_STATES_COLUMN]
    assert sum(encoded_rows) == 3
    tiny_model.encoder.eval()
    for row, prompt in enumerate(prompts):
        alone = code_tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            expected = tiny_model.encoder(**alone).last_hidden_state[0]
        torch.testing.assert_close(states[row], expected, atol=1e-5, rtol=1e-4)


def test_pretraining_collator_draws_differ_across_dataloader_workers_and_epochs(code_tokenizer):
    """Each worker gets a copy of the collator: without reseeding, its batches and epochs repeat the same draws."""
    data = code_dataset(code_tokenizer, repeat=8).to_list()
    collator = CodeFusionPretrainingCollator(code_tokenizer, code_tokenizer.pad_token_id, mask_rate=0.5)
    loader = torch.utils.data.DataLoader(data, batch_size=len(data) // 4, num_workers=2, collate_fn=collator)
    draws = [
        (tuple(b["unconditional"].tolist()), tuple(b["input_ids"].flatten().tolist()))
        for _ in range(2)
        for b in loader
    ]
    assert len(draws) == 8 and len(set(draws)) == 8


def test_load_code_dataset_checks_columns_and_rows(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"nl": "a", "cmd": "ls"}])
    with pytest.raises(ValueError, match=r"no column 'code'.*\['nl', 'cmd'\]"):
        load_code_dataset(path)
    with pytest.raises(ValueError, match=r"no column 'prompt'.*\['nl', 'cmd'\]"):
        load_code_dataset(path, code_column="cmd")
    assert load_code_dataset(path, prompt_column="nl", code_column="cmd")[0] == {"prompt": "a", "code": "ls"}

    messages = []
    monkeypatch.setattr(data_codefusion.logger, "warning", messages.append)
    rows = [{"prompt": "a", "code": "ls"}, {"prompt": None, "code": "x"}, {"prompt": "c", "code": " "}]
    data = load_code_dataset(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert data["code"] == ["ls"] and "skipped 2 of 3" in messages[0]
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("prompt,code\none,1\ntwo,2\n")
    with pytest.raises(ValueError, match="no usable rows"):
        load_code_dataset(str(numbers))  # a numeric code column: every row skipped, then a clear error

    with pytest.raises(ValueError, match="no usable rows"):
        load_code_dataset(write_jsonl(tmp_path / "empty_rows.jsonl", [{"prompt": "", "code": "ls"}]))
    with pytest.raises(ValueError, match="does not exist"):
        load_code_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_code_dataset(str(tmp_path / "data.txt"))
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,code\nlist,ls\n")
    assert load_code_dataset(str(csv))["code"] == ["ls"]


def test_prompts_without_a_prompt_tokenizer_are_rejected(code_tokenizer):
    data = Dataset.from_dict({"prompt": ["list files"], "code": ["ls"]})
    with pytest.raises(ValueError, match="prompt_tokenizer"):
        tokenize_dataset(data, code_tokenizer, 16)
    assert "input_ids" not in tokenize_dataset(data.remove_columns("prompt"), code_tokenizer, 16).column_names


def test_long_code_is_truncated_and_counted_once(code_tokenizer, monkeypatch):
    messages = []
    monkeypatch.setattr(data_codefusion.logger, "warning", messages.append)
    data = Dataset.from_dict({"code": ["ls -la " * 20, "df -h"]})
    tokenized = tokenize_dataset(data, code_tokenizer, 8)
    assert [len(ids) for ids in tokenized["labels"]] == [8, len(code_tokenizer("df -h")["input_ids"])]
    assert len(messages) == 1 and messages[0].startswith("1 of 2")


@pytest.mark.parametrize(
    "language, code, units",
    [
        ("python", "for x in range(n):\n    y = x + 1", ["for", "x", "in", "range", "n", "y", "x"]),
        ("bash", "find . -name '*.py' | xargs wc -l", ["find", ".", "-name", "'*.py'", "xargs", "wc", "-l"]),
        ("excel", "AND(GreaterThan(25),LessThan(50))", ["AND", "GreaterThan", "LessThan"]),
        ("python", "def broken(:", ["def", "broken"]),
    ],
)
def test_mask_spans(language, code, units):
    assert [code[start:end] for start, end in mask_spans(code, language)] == units


def test_mask_code_rates():
    generator = torch.Generator().manual_seed(0)
    assert mask_code("ls -la | wc -l", "bash", 1.0, "<mask>", generator) == "<mask> <mask> | <mask> <mask>"
    assert mask_code("ls -la | wc -l", "bash", 0.0, "<mask>", generator) == "ls -la | wc -l"


def test_load_code_dataset_max_samples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "code": f"c{i}"} for i in range(5)])
    assert load_code_dataset(path, max_samples=2)["code"] == ["c0", "c1"]
    assert len(load_code_dataset(path, max_samples=50)) == 5


def test_a_ragged_csv_or_a_file_of_empty_objects_names_the_file_and_the_fix(tmp_path):
    """A CSV row with more fields than the header would load with its extra fields as the columns; a file of `{}`
    failed with the builder's "corresponds to no data"."""
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,code\na,ls,extra,more\n")
    with pytest.raises(ValueError, match=r"ragged\.csv could not be read as csv: line 2 has 4 fields but the header"):
        load_code_dataset(str(ragged))
    short = tmp_path / "short.csv"
    short.write_text('prompt,code\n"list, all",ls\n\nonly\n')
    with pytest.raises(ValueError, match=r"short\.csv could not be read as csv: line 4 has 1 fields .* has 2"):
        load_code_dataset(str(short))
    empty_objects = write_jsonl(tmp_path / "empty_objects.jsonl", [{}, {}])
    with pytest.raises(ValueError, match=r"empty_objects\.jsonl .*empty object .*columns \['code', 'prompt'\]"):
        load_code_dataset(empty_objects)
