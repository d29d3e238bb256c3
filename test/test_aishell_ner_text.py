"""AISHELL-NER markup: the real dev transcript's figures, round trips, normalization and malformed marks."""
from collections import Counter

import pytest

from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import (
    Entity,
    MarkupError,
    mark_entities,
    normalize_transcript,
    parse_marked,
    parse_marked_lenient,
    strip_marks,
)


@pytest.fixture(scope="module")
def dev_lines():
    return AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()


def test_dev_transcript_figures(dev_lines):
    # The figures AISHELL-NER's README gives for its dev set.
    entity_counts, num_chars, speakers = Counter(), 0, set()
    for line in dev_lines:
        uttid, marked = line.split(maxsplit=1)
        plain, entities = parse_marked(normalize_transcript(marked))
        num_chars += len(plain)
        entity_counts.update(e.type for e in entities)
        speakers.add(uttid[6:11])
    assert len(dev_lines) == 14326
    assert sum(entity_counts.values()) == 7221
    assert entity_counts == {"PER": 1902, "LOC": 2588, "ORG": 2731}
    assert num_chars == 205341
    assert len(speakers) == 40 and min(speakers) == "S0724" and max(speakers) == "S0763"


def test_dev_transcript_round_trip(dev_lines):
    for line in dev_lines:
        marked = normalize_transcript(line.split(maxsplit=1)[1])
        plain, entities = parse_marked(marked)
        assert plain == strip_marks(marked)
        assert all(plain[e.start:e.end] == e.text for e in entities)
        assert mark_entities(plain, entities) == marked
        assert parse_marked_lenient(marked) == (plain, entities, [])


def test_normalization_of_full_width_letters(dev_lines):
    by_id = dict(line.split(maxsplit=1) for line in dev_lines)
    assert normalize_transcript(by_id["BAC009S0737W0408"]) == "[蔡卓妍]穿着黑色t恤"
    assert normalize_transcript(by_id["BAC009S0761W0385"]) == "现役球员里我最喜欢[c罗]"
    assert parse_marked(normalize_transcript(by_id["BAC009S0739W0467"]))[0] == "国家旅游局宣布撤销对五台山五a级景区的警告处分"
    assert normalize_transcript("ＶＩＰ 会员 ｔｏｐ１０\t第 二") == "VIP会员top10第二"
    assert normalize_transcript("北京") == "北京"  # CJK characters are left alone


def test_parse_marked_entities():
    plain, entities = parse_marked("[张三]在(北京)的<清华大学>")
    assert plain == "张三在北京的清华大学"
    assert entities == [Entity("PER", "张三", 0, 2), Entity("LOC", "北京", 3, 5), Entity("ORG", "清华大学", 6, 10)]


@pytest.mark.parametrize(
    "marked, message",
    [
        ("[张三在北京", "never closed"),
        ("张三]在北京", "without an opening mark"),
        ("[张三)在北京", r"closed by '\)'"),
        ("<(北京)大学>", "nested"),
        ("在[]北京", "empty entity"),
    ],
)
def test_parse_marked_rejects_malformed(marked, message):
    with pytest.raises(MarkupError, match=message):
        parse_marked(marked)


@pytest.mark.parametrize(
    "output, plain, entities, num_problems",
    [
        ("[张三在北京", "张三在北京", [], 1),
        ("张三]在(北京)", "张三在北京", [Entity("LOC", "北京", 3, 5)], 1),
        ("<(北京)大学>", "北京大学", [Entity("LOC", "北京", 0, 2)], 2),
        ("在[]北京", "在北京", [], 1),
        ("[张三)在<北京>", "张三在北京", [Entity("ORG", "北京", 3, 5)], 1),
    ],
)
def test_parse_marked_lenient_repairs_model_output(output, plain, entities, num_problems):
    got_plain, got_entities, problems = parse_marked_lenient(output)
    assert (got_plain, got_entities) == (plain, entities)
    assert len(problems) == num_problems
