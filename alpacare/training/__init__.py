"""Instruction tuning: tokenization and resumable batches, model loading (full, LoRA, QLoRA), the LightningModule, the Trainer builders, and what training exports."""
