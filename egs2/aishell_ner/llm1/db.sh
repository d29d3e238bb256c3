# Where the corpora are. Both empty: run.sh builds the bundled mini corpus under downloads/ and uses it.

# AISHELL-1 (openslr 33): the directory data_aishell/ or its parent (transcript/ and wav/, the wav
# tarballs unpacked or not), e.g. AISHELL=/corpora/aishell/data_aishell
AISHELL=
# AISHELL-NER transcripts, space-separated: the combined file, or the train, dev and test files,
# e.g. AISHELL_NER="/corpora/aishell_ner/train.txt /corpora/aishell_ner/dev.txt /corpora/aishell_ner/test.txt"
AISHELL_NER=
