"""Train the byte-level BPE code tokenizer on the code column of one or more data files.

    python examples/text_to_code/train_tokenizer.py --train_files ../shared/data/nl2bash/pretrain_snippets.jsonl \
        data/nl2bash/train.jsonl --vocab_size 8000 --output_dir runs/nl2bash-tokenizer
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from codefusion_hf import train_code_tokenizer
from codefusion_hf.data_codefusion import load_code_dataset


@dataclass
class TokenizerArguments:
    train_files: list[str] = field(metadata={"help": "Data files whose code column the tokenizer learns from."})
    output_dir: str = field(metadata={"help": "Where to save the tokenizer."})
    code_column: str = field(default="code", metadata={"help": "Column holding the code."})
    vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size (a 64-token canvas covers 99%% of NL2Bash at 8000)."}
    )
    min_frequency: int = field(default=2, metadata={"help": "Minimum count of a merged pair."})
    model_max_length: int = field(default=128, metadata={"help": "Recorded on the tokenizer."})


def main():
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses()
    texts = [
        code
        for path in args.train_files
        for code in load_code_dataset(path, prompt_column=None, code_column=args.code_column)["code"]
    ]
    tokenizer = train_code_tokenizer(texts, args.vocab_size, args.min_frequency, args.model_max_length)
    tokenizer.save_pretrained(args.output_dir)
    print(f"Trained a {len(tokenizer)}-token tokenizer on {len(texts)} snippets; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
