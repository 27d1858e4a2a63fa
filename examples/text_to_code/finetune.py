"""Phase 2: supervised fine-tuning of CodeFusion on (prompt, code) pairs.

    python examples/text_to_code/finetune.py examples/text_to_code/configs/nl2bash_finetune.json
    accelerate launch --config_file examples/text_to_code/accelerate/ddp.yaml examples/text_to_code/finetune.py \
        examples/text_to_code/configs/nl2bash_finetune.json

Resumes from the last checkpoint in --output_dir; saves a CodeFusionPipeline there at the end.
"""

from training_setup import model_card_fields, setup, train_and_save

from codefusion_hf.data_codefusion import CodeFusionDataCollator, load_code_dataset, tokenize_dataset
from codefusion_hf.training_codefusion import CodeFusionTrainer


def main():
    model_args, data_args, training_args, model, code_tokenizer, prompt_tokenizer = setup()
    config = model.config

    def load(path, max_samples, split):
        columns = (data_args.prompt_column, data_args.code_column)
        return load_code_dataset(path or data_args.dataset_name, split, *columns, max_samples)

    def tokenize(data):
        return tokenize_dataset(
            data, code_tokenizer, config.max_code_length, prompt_tokenizer or code_tokenizer, config.max_prompt_length
        )

    train_data = load(data_args.train_file, data_args.max_train_samples, "train")
    eval_data = None
    if data_args.validation_file or (data_args.dataset_name and training_args.eval_strategy != "no"):
        eval_data = load(data_args.validation_file, data_args.max_eval_samples, "validation")

    trainer = CodeFusionTrainer(
        model=model,
        args=training_args,
        code_tokenizer=code_tokenizer,
        prompt_tokenizer=prompt_tokenizer,
        train_dataset=tokenize(train_data),
        eval_dataset=tokenize(eval_data) if eval_data is not None else None,
        data_collator=CodeFusionDataCollator(prompt_tokenizer or code_tokenizer, config.pad_token_id),
        generation_eval_dataset=eval_data,
    )
    return train_and_save(trainer, "CodeFusion fine-tuned", model_card_fields(model_args, data_args))


if __name__ == "__main__":
    main()
