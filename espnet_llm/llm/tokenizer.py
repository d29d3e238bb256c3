"""ChatGLM3's tokenizer over sentencepiece, with the project's task tokens, and ChatGLM3's chat format.

Facts of ChatGLM3's tokenizer kept here: ``tokenizer.model`` is a plain SentencePiece model; nine special
tokens take the ids right after its vocabulary, in the order of CHATGLM3_SPECIAL_TOKENS ([gMASK] = n + 1,
sop = n + 3, <|user|> = n + 6, <|assistant|> = n + 7; n = 64789 for ChatGLM3-6B); eos is sentencepiece's
``</s>``, padding uses ``<unk>`` (id 0). Every prompt starts with [gMASK] sop; a message is its role token,
then the text "{metadata}\\n", then its content, each encoded separately; a chat prompt ends with
<|assistant|>, after which the model writes "\\n" and its answer.
Our task tokens follow the nine, so ChatGLM3-6B's padded vocabulary (65024 rows) already has room for them.

Hand-written because ChatGLM3's own tokenizer is hub code (trust_remote_code), which the project avoids.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

CHATGLM3_SPECIAL_TOKENS = (
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)
# The project's tokens, defined here only: one per task (short-form ASR, long-form ASR with history, NER), and
# the separator of utterances. Their order gives their ids after the vocabulary's.
TASK_TOKEN = {"asr_short": "<|asr_short|>", "asr_long": "<|asr_long|>", "ner": "<|ner|>"}
NER_TOKEN = TASK_TOKEN["ner"]
SEPARATOR = "<|sep|>"
TASK_TOKENS = (*TASK_TOKEN.values(), SEPARATOR)
ROLES = ("system", "user", "assistant", "observation")


class ChatGLM3Tokenizer:
    def __init__(self, model_file):
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.sp_vocab_size = self.sp.vocab_size()
        self.special_ids = {
            name: self.sp_vocab_size + i for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS + TASK_TOKENS)
        }
        self.special_names = {i: name for name, i in self.special_ids.items()}
        # Longest first so that no special is matched by a shorter one that is its prefix.
        alternatives = sorted(self.special_ids, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.unk_id()

    def __len__(self) -> int:
        return self.sp_vocab_size + len(self.special_ids)

    def token_id(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token; known: {list(self.special_ids)}") from None

    def encode(self, text: str) -> list[int]:
        """Ids of plain text: special-token strings in it are ordinary characters, never special ids."""
        return self.sp.encode(text)

    def encode_with_specials(self, text: str) -> list[int]:
        """Ids of text in which special-token strings (``<|user|>``, ``<|ner|>``...) each become one id."""
        ids: list[int] = []
        for i, part in enumerate(self._special_pattern.split(text)):
            if i % 2:  # re.split puts the captured separators at odd positions
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, special tokens skipped; text between specials is decoded run by run, as it was encoded."""
        pieces, run = [], []
        for i in map(int, ids):
            if not 0 <= i < len(self):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self)} ({self.model_file})")
            if i < self.sp_vocab_size:
                run.append(i)
            elif run:
                pieces.append(self.sp.decode(run))
                run = []
        if run:
            pieces.append(self.sp.decode(run))
        return "".join(pieces)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.special_names.get(i) or self.sp.id_to_piece(i) for i in map(int, ids)]

    @property
    def prefix_ids(self) -> list[int]:
        """[gMASK] sop: the start of every ChatGLM3 input."""
        return [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    def build_message(self, role: str, content: str, metadata: str = "") -> list[int]:
        """One chat message: <|role|>, "{metadata}\\n", content (content is plain text: specials not parsed).

        As in ChatGLM3 the two parts are encoded separately, each with sentencepiece's "▁" prefix, so decoding a
        message gives "\\n content" (the space is that prefix; whitespace-free scoring text drops it).
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        return [self.special_ids[f"<|{role}|>"]] + self.encode(f"{metadata}\n") + self.encode(content)

    def build_chat_prompt(self, query: str, history: Sequence[tuple[str, str]] = (), role: str = "user") -> list[int]:
        """[gMASK] sop, the (role, content) history, the query as a ``role`` message, then <|assistant|>."""
        ids = list(self.prefix_ids)
        for past_role, content in history:
            ids += self.build_message(past_role, content)
        ids += self.build_message(role, query)
        return ids + [self.special_ids["<|assistant|>"]]

    def fingerprint(self) -> dict:
        """What a trained model's token ids mean: the sha256 of tokenizer.model, and the ids of the special and task
        tokens (which follow its vocabulary). Training writes it into config.yaml; another tokenizer is refused."""
        return {"sha256": hashlib.sha256(self.model_file.read_bytes()).hexdigest(), "special_ids": dict(self.special_ids)}

    def tokens(self) -> list[str]:
        """Every token in id order: the sentencepiece pieces, then the specials."""
        return [self.sp.id_to_piece(i) for i in range(self.sp_vocab_size)] + list(self.special_ids)


def prepare_tokenizer(model_dir, output_dir) -> ChatGLM3Tokenizer:
    """Copy a ChatGLM3 tokenizer.model to output_dir with tokens.txt, checking it fits the model's vocabulary."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    source = model_dir / "tokenizer.model"
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    tokenizer = ChatGLM3Tokenizer(source)
    config = json.loads((model_dir / "config.json").read_text())
    rows = config.get("padded_vocab_size") or config["vocab_size"]  # official or transformers layout
    if len(tokenizer) > rows:
        raise ValueError(f"{source}: {len(tokenizer)} tokens with specials, but the model has {rows} embedding rows")
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, output_dir / "tokenizer.model")
    (output_dir / "tokens.txt").write_text("\n".join(tokenizer.tokens()) + "\n", encoding="utf-8")
    print(
        f"{output_dir}: tokenizer.model ({tokenizer.sp_vocab_size} pieces + {len(tokenizer.special_ids)} specials "
        f"= {len(tokenizer)} <= {rows} rows), tokens.txt; [gMASK]={tokenizer.token_id('[gMASK]')} "
        f"<|ner|>={tokenizer.token_id('<|ner|>')} eos={tokenizer.eos_id} pad={tokenizer.pad_id}"
    )
    return ChatGLM3Tokenizer(output_dir / "tokenizer.model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare ChatGLM3's tokenizer for the LLM systems (recipe stage 5)")
    parser.add_argument("--model_dir", type=Path, required=True, help="ChatGLM3 directory (either layout)")
    parser.add_argument("--output_dir", type=Path, required=True, help="e.g. data/token_list/chatglm3")
    args = parser.parse_args(argv)
    prepare_tokenizer(args.model_dir, args.output_dir)


if __name__ == "__main__":
    main()
