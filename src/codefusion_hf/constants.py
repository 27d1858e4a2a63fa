"""Names shared by the library and the `codefusion` command, in a module without heavy imports so that
`codefusion --help` lists the choices without loading torch."""

# How a sampler pulls each step's x0 estimate onto code tokens (see `CodeFusionModel.round_estimate`): not at all,
# to the nearest code embedding, or through the decoder (its most likely tokens, or the embeddings averaged under
# its token distribution).
ROUNDINGS = ("none", "nearest", "decoder", "decoder_mean")
DECODER_ROUNDINGS = ("decoder", "decoder_mean")

# Languages the evaluation scores; "other" is any language without a syntax check (exact match and BLEU only).
SYNTAX_LANGUAGES = ("python", "bash", "excel")
LANGUAGES = (*SYNTAX_LANGUAGES, "other")
LANGUAGE_HELP = "python, bash, excel or other; bash adds template match to exact match."

# How the pipeline ranks a prompt's candidates (see `ranking_codefusion.ranking_scores`): the decoder's mean token
# log-probability with the token that ends the code, the same without it (empty code last), or the agreement of each
# candidate with the others (minimum-Bayes-risk style).
RANKINGS = ("log_prob", "length_normalized", "consensus")

# The special ids of the code tokenizer a model config records (CodeT5's: <s>=0, <pad>=1, </s>=2, <mask>=4).
SPECIAL_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id")
