"""A code tokenizer trained locally with `tokenizers` (online users can load CodeT5's by name instead)."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Same ids as CodeT5's tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4), so configs fit both.
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def train_code_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """
    Train a byte-level BPE tokenizer on code. Byte-level BPE covers every byte, so `decode(encode(code)) == code`
    for any string: whitespace, newlines and quotes survive. No special tokens are added around encodings; the
    CodeFusion canvas is padded with `<pad>` instead.

    Args:
        texts: Training texts (e.g. the code column, or code and prompts when they share the tokenizer).
        vocab_size: Size of the vocabulary, special tokens and the 256 byte symbols included.
        min_frequency: Minimum count of a pair to be merged.
        model_max_length: Recorded on the tokenizer; truncation uses it by default.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # the default clean-up turns "find ." into "find."
        **SPECIAL_TOKENS,
    )


__all__ = ["train_code_tokenizer"]
