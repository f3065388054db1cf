"""Embedders turn one window of audio into one L2-normalised vector."""
