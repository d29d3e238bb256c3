"""Whisper as the speech encoder: log-mel features in torch, the encoder from local checkpoints."""
