"""Speech LLMs: Whisper + ChatGLM3, decoder-only and encoder-decoder, as ESPnet models."""
