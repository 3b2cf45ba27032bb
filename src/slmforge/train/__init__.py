"""Fine-tuning: one training loop; LoRA/DoRA/QLoRA/full differ only in a small method object."""
