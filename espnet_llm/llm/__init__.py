"""ChatGLM3 as transformers' GlmForCausalLM: checkpoint conversion, loading, tokenizer, tiny models, and LoRA
on it as the speech LLMs use it."""
