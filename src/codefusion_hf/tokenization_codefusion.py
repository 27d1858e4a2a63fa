"""A code tokenizer trained locally with `tokenizers` (online users can load CodeT5's by name instead)."""

import hashlib
import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .constants import SPECIAL_TOKEN_IDS

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


def vocabulary_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 of the tokenizer's token-to-id map: two tokenizers that give any token another id differ, so a model's
    embedding rows can be matched to the vocabulary they were trained with."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocabulary.encode()).hexdigest()


def check_code_tokenizer(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
    """Raise a `ValueError` unless `tokenizer` fits a model of `config`: as many tokens as its vocabulary, the
    vocabulary recorded when the model was saved in a pipeline (`config.code_vocabulary_sha256`, when set: a
    tokenizer.json with two ids swapped would decode those tokens wrong), and the special ids the model pads,
    starts, ends and masks with are the tokenizer's (an id inside the vocabulary but of another token would pad
    with a real token, or stop at the wrong one, in silence)."""
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but model.config.vocab_size is {config.vocab_size}: "
            "use the code tokenizer the model was built for."
        )
    expected = getattr(config, "code_vocabulary_sha256", None)
    if expected is not None and vocabulary_sha256(tokenizer) != expected:
        raise ValueError(
            "The tokenizer maps tokens to other ids than the one saved with the model (model.config."
            f"code_vocabulary_sha256 {expected}; in a saved pipeline tokenizer/tokenizer.json against "
            "model/config.json), so the model's code would be decoded wrong: use the tokenizer saved with it."
        )
    for name in SPECIAL_TOKEN_IDS:
        expected = getattr(tokenizer, name, None)
        if expected is not None and getattr(config, name) != expected:
            token = getattr(tokenizer, name.removesuffix("_id"))
            raise ValueError(
                f"model.config.{name} is {getattr(config, name)} (model/config.json of a saved pipeline), but the "
                f"tokenizer's {token!r} has id {expected}: set {name} to {expected}, or use the tokenizer the model "
                "was trained with."
            )


__all__ = ["check_code_tokenizer", "train_code_tokenizer", "vocabulary_sha256"]
