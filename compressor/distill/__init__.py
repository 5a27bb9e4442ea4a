"""Distillation: recover a compressed model's accuracy by training it to match the original (the teacher)."""
