"""Files shipped with the package."""
from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent
AISHELL_NER_DEV_TRANSCRIPT = RESOURCES_DIR / "aishell_ner_dev" / "aishell_ner_transcript.dev.txt"
