"""Phase 1: pre-training CodeFusion on code snippets alone (unconditional generation + CPD), encoder frozen.

    python examples/text_to_code/pretrain.py examples/text_to_code/configs/nl2bash_pretrain.json

Resumes from the last checkpoint in --output_dir; saves a CodeFusionPipeline there at the end, which
finetune.py continues from with --model_name_or_path.
"""

from training_setup import model_card_fields, setup, train_and_save

from codefusion_hf.data_codefusion import CodeFusionPretrainingCollator, load_code_dataset, tokenize_dataset
from codefusion_hf.training_codefusion import CodeFusionPretrainer


def main():
    model_args, data_args, training_args, model, code_tokenizer, prompt_tokenizer = setup()
    config = model.config

    def load(path, max_samples, split):
        data = load_code_dataset(path or data_args.dataset_name, split, None, data_args.code_column, max_samples)
        return tokenize_dataset(data, code_tokenizer, config.max_code_length)

    train_data = load(data_args.train_file, data_args.max_train_samples, "train")
    eval_data = (
        load(data_args.validation_file, data_args.max_eval_samples, "validation")
        if data_args.validation_file
        else None
    )
    trainer = CodeFusionPretrainer(
        model=model,
        args=training_args,
        code_tokenizer=code_tokenizer,
        prompt_tokenizer=prompt_tokenizer,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=CodeFusionPretrainingCollator(
            prompt_tokenizer or code_tokenizer,
            config.pad_token_id,
            language=training_args.language,
            mask_rate=training_args.cpd_mask_rate,
            unconditional_probability=training_args.unconditional_probability,
            max_prompt_length=config.max_prompt_length,
            seed=training_args.seed,
        ),
    )
    return train_and_save(trainer, "CodeFusion pre-trained", model_card_fields(model_args, data_args))


if __name__ == "__main__":
    main()
