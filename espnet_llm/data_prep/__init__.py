"""Data preparation for egs2/aishell_ner/llm1: stage 1 (AISHELL-1 + AISHELL-NER, the mini corpus, historical context) to stage 5."""
