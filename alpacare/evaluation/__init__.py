"""Evaluation: loading a trained model for inference, win rates from judge verdicts, and the lm-eval benchmarks."""
