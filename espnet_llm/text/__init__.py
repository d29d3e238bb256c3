"""Text handling shared by data preparation, models and scoring."""
