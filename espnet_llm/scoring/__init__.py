"""Scoring: CER with sclite in ESPnet's trn format, NER precision/recall/F1, and RESULTS.md."""
