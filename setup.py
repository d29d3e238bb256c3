"""espnet_llm: a large language model as an end-to-end Chinese ASR and NER system, in ESPnet."""
from setuptools import find_packages, setup

setup(
    name="espnet_llm",
    version="0.1.0",
    description="Whisper + ChatGLM3 speech LLMs for Chinese ASR and NER as ESPnet tasks and recipes",
    packages=find_packages(include=["espnet_llm", "espnet_llm.*"]),
    package_data={"espnet_llm": ["resources/aishell_ner_dev/*"]},
    python_requires=">=3.10",
    # The pinned environment lives in tools/requirements.txt; these are the loose needs.
    install_requires=["espnet>=202511", "transformers>=5.0", "peft", "sentencepiece", "kaldiio", "soundfile"],
    license="Apache-2.0",
)
