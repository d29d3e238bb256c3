"""ChatGLM3 as transformers' GlmForCausalLM: checkpoint conversion, loading, tokenizer, tiny models."""
