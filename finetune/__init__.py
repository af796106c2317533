"""Training and evaluation: the small default model, LoRA on large ones, checkpoints and promotion."""
