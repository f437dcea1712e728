"""GPT-2 instruction fine-tuning: model, weights, tokenizer, data, generation, training."""
