"""Speech LLMs (Whisper + ChatGLM3) for Chinese ASR and NER, as ESPnet tasks."""
