"""Supervised fine-tuning of the streaming model, both stages of the paper (`python -m trainer`)."""
