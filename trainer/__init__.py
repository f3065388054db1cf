"""Workstation side: data sets, backbones, fine-tuning, evaluation and export (uses torch)."""
