"""ESPnet tasks of the project (the speech LLM task)."""
