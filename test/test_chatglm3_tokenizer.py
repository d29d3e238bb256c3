import json

import pytest
import sentencepiece as spm

from espnet_llm.mini.tiny_chatglm3 import train_tiny_sentencepiece
from espnet_llm.llm.tokenizer import CHATGLM3_SPECIAL_TOKENS, TASK_TOKENS, ChatGLM3Tokenizer, prepare_tokenizer
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model_file = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_tiny_sentencepiece(model_file)
    return ChatGLM3Tokenizer(model_file)


@pytest.fixture(scope="module")
def dev_lines():
    lines = AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 14326
    return lines


def test_special_ids_follow_the_sentencepiece_vocabulary(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.model_file))
    n = sp.vocab_size()
    for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS + TASK_TOKENS):
        assert tokenizer.token_id(name) == n + i
    assert len(tokenizer) == n + 9 + 4
    assert tokenizer.eos_id == sp.piece_to_id("</s>") == 2
    assert tokenizer.pad_id == sp.piece_to_id("<unk>") == 0
    with pytest.raises(KeyError, match="not a special token"):
        tokenizer.token_id("<|nothing|>")


def test_special_order_gives_chatglm3_6b_published_ids():
    # ChatGLM3-6B's tokenizer.model has 64,789 pieces; its published ids of the specials:
    published = {"[MASK]": 64789, "[gMASK]": 64790, "sop": 64792, "<|user|>": 64795, "<|assistant|>": 64796,
                 "<|observation|>": 64797}
    assert {name: 64789 + CHATGLM3_SPECIAL_TOKENS.index(name) for name in published} == published
    assert 64789 + len(CHATGLM3_SPECIAL_TOKENS) + len(TASK_TOKENS) <= 65024  # task tokens fit its embedding rows


def test_every_dev_line_round_trips(tokenizer, dev_lines):
    for line in dev_lines:
        text = line.split(" ", 1)[1]  # marked transcript: <广州市房地产中介协会>分析
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text, line
        assert all(i < tokenizer.sp_vocab_size for i in ids)
        assert tokenizer.decode(tokenizer.encode(line)) == line  # with the utterance id and the space


def test_unseen_text_round_trips_by_byte_fallback(tokenizer):
    sp = tokenizer.sp
    for text in ["ChatGLM3 6B!", "𠮷野家 😀", "ｆｕｌｌ－ｗｉｄｔｈ", "两行\n文字", "  leading spaces"]:
        ids = tokenizer.encode(text)
        assert sp.unk_id() not in ids
        assert tokenizer.decode(ids) == text


def test_specials_are_never_split(tokenizer, dev_lines):
    specials = CHATGLM3_SPECIAL_TOKENS + TASK_TOKENS
    marked = dev_lines[0].split(" ", 1)[1]  # starts with the organisation mark '<'
    for name in specials:
        text = f"{name}{marked}{name}<{name}>"
        ids = tokenizer.encode_with_specials(text)
        assert ids.count(tokenizer.token_id(name)) == 3
        assert [i for i in ids if i >= tokenizer.sp_vocab_size] == [tokenizer.token_id(name)] * 3
        assert tokenizer.decode(ids) == f"{marked}<>"
        plain = tokenizer.encode(text)  # plain text: the same string is characters, never a special id
        assert all(i < tokenizer.sp_vocab_size for i in plain) and tokenizer.decode(plain) == text
    everything = "".join(specials)
    assert tokenizer.encode_with_specials(everything) == [tokenizer.token_id(s) for s in specials]
    assert tokenizer.decode(tokenizer.encode_with_specials("<|ner|") + [0]) != ""  # partial name stays text


def test_chat_prompt_has_chatglm3_format(tokenizer):
    t = tokenizer
    ids = t.build_chat_prompt("广州市")
    assert ids == [t.token_id("[gMASK]"), t.token_id("sop"), t.token_id("<|user|>"), *t.encode("\n"),
                   *t.encode("广州市"), t.token_id("<|assistant|>")]
    assert t.convert_ids_to_tokens(ids[:5]) == ["[gMASK]", "sop", "<|user|>", "▁", "<0x0A>"]
    assert t.encode("\n") == [t.sp.piece_to_id("▁"), 13]  # "\n" is byte <0x0A> = 13, as in ChatGLM3
    with_history = t.build_chat_prompt("分析", history=[("system", "识别"), ("user", "甲"), ("assistant", "乙")])
    roles = [i for i in with_history if i >= t.sp_vocab_size]
    names = ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|user|>", "<|assistant|>"]
    assert roles == [t.token_id(n) for n in names]
    # "\n" and the content are encoded separately, so the content's sentencepiece prefix decodes as a space
    assert t.decode(with_history) == "\n 识别\n 甲\n 乙\n 分析"
    with pytest.raises(ValueError, match="role"):
        t.build_message("robot", "x")


@pytest.mark.parametrize("task", ["asr_short", "asr_long", "ner"])
def test_every_task_prompt_is_a_chatglm3_user_turn_then_the_assistant_line(tokenizer, task):
    """The prompt around the speech is ChatGLM3's own turn format: what the pretrained LLM has read. With the speech
    taken as the user message (text here), the prompt is build_chat_prompt's, and the answer follows the
    assistant's metadata line ("\\n"), which ChatGLM3 writes itself before a reply."""
    from espnet_llm.llm.tokenizer import TASK_TOKEN
    from espnet_llm.models.prompts import PromptLayout

    t, layout = tokenizer, PromptLayout(tokenizer, task)
    speech = t.encode("广州市")  # stands in for the speech embeddings
    prompt = layout.prefix_ids + speech + layout.suffix_ids
    chat = t.build_chat_prompt("广州市")
    assert prompt == chat[:-1] + [t.token_id(TASK_TOKEN[task]), chat[-1], *t.encode("\n")]
    assert t.convert_ids_to_tokens(layout.prefix_ids) == ["[gMASK]", "sop", "<|user|>", "▁", "<0x0A>"]
    assert t.convert_ids_to_tokens(layout.suffix_ids) == [TASK_TOKEN[task], "<|assistant|>", "▁", "<0x0A>"]


def test_out_of_vocabulary_id_is_an_error(tokenizer):
    with pytest.raises(ValueError, match=f"token id {len(tokenizer)} is outside"):
        tokenizer.decode([5, len(tokenizer)])


def test_prepare_tokenizer_checks_the_embedding_rows(tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "tokenizer.model").write_bytes(tokenizer.model_file.read_bytes())
    (model_dir / "config.json").write_text(json.dumps({"padded_vocab_size": len(tokenizer)}))
    prepared = prepare_tokenizer(model_dir, tmp_path / "token_list")
    assert len(prepared) == len(tokenizer)
    tokens = (tmp_path / "token_list" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert len(tokens) == len(set(tokens)) == len(tokenizer)
    assert tokens[tokenizer.token_id("<|ner|>")] == "<|ner|>" and tokens[13] == "<0x0A>"
    (model_dir / "config.json").write_text(json.dumps({"vocab_size": len(tokenizer) - 1}))  # transformers layout
    with pytest.raises(ValueError, match="embedding rows"):
        prepare_tokenizer(model_dir, tmp_path / "token_list2")
