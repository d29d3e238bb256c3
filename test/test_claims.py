"""RESULTS.md's controls and its check of the paper's claims, and the paired bootstrap behind the intervals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from espnet_llm.scoring.bootstrap import Interval, paired_bootstrap
from espnet_llm.scoring.cer import score_cer
from espnet_llm.scoring.ner import score_ner
from espnet_llm.scoring.results import find_runs, write_results


def cer_difference(sums):
    """columns: reference characters, errors of a, errors of b -> CER_a - CER_b in points"""
    return 100 * (sums[1] - sums[2]) / sums[0]


# ------------------------------------------------------------------------------------------ bootstrap

def test_bootstrap_separates_a_clearly_better_run_and_not_equal_ones():
    rng = np.random.default_rng(1)
    refs = rng.integers(5, 15, 200)
    good, bad, good_too = rng.binomial(refs, 0.05), rng.binomial(refs, 0.2), rng.binomial(refs, 0.05)
    better = paired_bootstrap(np.c_[refs, good, bad], cer_difference)
    assert better.estimate == pytest.approx(100 * (good.sum() - bad.sum()) / refs.sum())
    assert better.low < better.estimate < better.high < 0
    equally_good = paired_bootstrap(np.c_[refs, good, good_too], cer_difference)
    assert equally_good.low < 0 < equally_good.high
    assert paired_bootstrap(np.c_[refs, good, good], cer_difference) == Interval(0.0, 0.0, 0.0)


def test_bootstrap_is_paired_and_as_wide_as_the_standard_error_says():
    rng = np.random.default_rng(2)
    refs = np.full(400, 10)
    a = rng.integers(0, 10, 400)
    # one error more on every utterance, however hard: each draw of the same utterances differs by exactly 10 points
    assert paired_bootstrap(np.c_[refs, a + 1, a], cer_difference) == Interval(10.0, 10.0, 10.0)
    # a difference that varies: the 95 % interval is about the estimate +- 1.96 standard errors
    b = a + rng.integers(-2, 3, 400)
    interval = paired_bootstrap(np.c_[refs, b, a], cer_difference)
    half_width = 1.96 * 100 * np.std(b - a) / 10 / np.sqrt(400)
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.15)


# ------------------------------------------------------------------------------------- fake exp dirs

CHARS = "北京欢迎你今天天气很好我们一起去上海看朋友明年春天再见了"
UTTS = [f"u{i:02d}" for i in range(30)]
DECODING = "decode_speech_llm_valid.acc_current.ave"  # <run>/<inference tag>/<set>, as asr.sh lays it out
REFS = {u: "".join(CHARS[(3 * i + j) % len(CHARS)] for j in range(6)) for i, u in enumerate(UTTS)}


def with_errors(text: str, n: int) -> str:
    """n substitutions: the first n characters replaced"""
    return "错" * n + text[n:]


def write_text(path, texts: dict[str, str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u} {t}\n" for u, t in texts.items()), encoding="utf-8")
    return path


def decode(recipe, run: str, dset: str, hyps: dict[str, str], ner_hyps: dict[str, str] | None = None,
           decode_name: str | None = None):
    """<decoding>/<set>/text (and text_ner) of a run, scored as stage 13 scores it against data/<set>."""
    decode_dir = recipe / "exp" / run / DECODING / (decode_name or dset)
    score_cer(recipe / "data" / dset / "text", write_text(decode_dir / "text", hyps), decode_dir / "score_cer",
              backend="fallback")
    if ner_hyps is not None:
        score_ner(recipe / "data" / dset / "text_ner", write_text(decode_dir / "text_ner", ner_hyps),
                  decode_dir / "score_ner")


@pytest.fixture
def recipe(tmp_path):
    for dset in ("dev", "test"):
        write_text(tmp_path / "data" / dset / "text", REFS)
        write_text(tmp_path / "data" / dset / "text_ner", {u: f"[{t[:2]}]{t[2:]}" for u, t in REFS.items()})
    return tmp_path


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")][2:]


def claim_row(text: str, claim: str) -> list[str]:
    rows = [row for row in table_rows(section(text, "The paper's claims, checked")) if row.startswith(f"|{claim}")]
    assert len(rows) == 1, rows
    return rows[0].split("|")[1:-1]


def result_cer(recipe, run: str, dset: str) -> float:
    result = recipe / "exp" / run / DECODING / dset / "score_cer" / "result.json"
    return json.loads(result.read_text(encoding="utf-8"))["percent"]["Err"]


# ------------------------------------------------------------------------------------------ controls

def test_controls_count_verbatim_training_sentences_and_the_other_speech_cer(recipe):
    # normalised and without marks, as scoring does: space, entity marks and full-width letters do not count
    write_text(recipe / "data" / "train" / "text", {"t1": "北京欢迎你", "t2": "KTV里见", "t3": "今天 天气很好", "t4": ""})
    hyps = {"u00": "(北京) 欢迎你", "u01": "ＫＴＶ里见", "u02": "今天天气很好啊", "u03": ""}  # 2 of 4 recited
    decode(recipe, "decoder_only/short", "test", hyps)
    decode(recipe, "decoder_only/short", "test", {u: REFS["u00"] for u in UTTS}, decode_name="test_other_speech")
    decode(recipe, "decoder_only/long", "test", {"u00": "北京欢迎你"})
    write_results(recipe / "exp", recipe / "RESULTS.md")
    text = (recipe / "RESULTS.md").read_text(encoding="utf-8")

    other_speech = result_cer(recipe, "decoder_only/short", "test_other_speech")
    assert table_rows(section(text, "Controls")) == [
        f"|decoder_only|short|test|4|50.0 (2)|{result_cer(recipe, 'decoder_only/short', 'test'):.1f}|{other_speech:.1f}|",
        f"|decoder_only|long|test|1|100.0 (1)|{result_cer(recipe, 'decoder_only/long', 'test'):.1f}|-|",
    ]
    # the control decoding is no set of its own: not in the summary, nor a CER table of the run
    assert "other_speech" not in section(text, "Summary") and "other_speech" not in section(text, "decoder_only/short")
    assert [sorted(run.cer) for run in find_runs(recipe / "exp")] == [["test"], ["test"]]


def test_controls_without_training_text_or_other_speech_are_left_out(recipe):
    decode(recipe, "decoder_only/short", "test", REFS)
    write_results(recipe / "exp", recipe / "RESULTS.md")
    assert "## Controls" not in (recipe / "RESULTS.md").read_text(encoding="utf-8")


# -------------------------------------------------------------------------------------------- claims

def test_cer_claims_with_intervals_and_the_sweep_absent(recipe):
    some = {u: t for u, t in REFS.items() if u != "u05"}  # u05 not decoded: all deleted
    for dset in ("dev", "test"):
        decode(recipe, "decoder_only/short", dset, {u: with_errors(t, 1) for u, t in REFS.items()})
        decode(recipe, "decoder_only/long", dset, some)
        decode(recipe, "encoder_decoder/short", dset, {u: with_errors(t, 2) for u, t in REFS.items()})
    # the same number of errors on every utterance as its short form: no difference in any draw
    decode(recipe, "encoder_decoder/long", "test", {u: t[:4] + "错错" for u, t in REFS.items()})
    (recipe / "exp" / "encoder_decoder" / "short" / "gate_values.json").write_text(json.dumps({"gates": [0.6]}))
    write_results(recipe / "exp", recipe / "RESULTS.md")
    text = (recipe / "RESULTS.md").read_text(encoding="utf-8")

    def estimate(dset, *terms):
        return sum(w * result_cer(recipe, run, dset) for run, w in terms)

    do_s, do_l, ed_s, ed_l = "decoder_only/short", "decoder_only/long", "encoder_decoder/short", "encoder_decoder/long"
    _, _, measured, verdict = claim_row(text, "The encoder-decoder's short-form CER is lower")
    assert measured.startswith(f"test {estimate('test', (ed_s, 1), (do_s, -1)):+.2f} [")
    assert verdict == "test: does not hold<br>dev: does not hold"
    _, _, measured, verdict = claim_row(text, "Long form (with history) has a lower CER than short form: decoder_only")
    # the deletions of the missing hypothesis are in the paired counts as in result.json
    assert measured.startswith(f"test {estimate('test', (do_l, 1), (do_s, -1)):+.2f} [")
    assert verdict == "test: holds<br>dev: holds"
    _, _, measured, verdict = claim_row(text, "Long form (with history) has a lower CER than short form: encoder_decoder")
    assert measured == "test +0.00 [+0.00, +0.00]"
    assert verdict == "test: not significant<br>dev: not measured (encoder_decoder/long has no scored dev)"
    _, _, measured, verdict = claim_row(text, "The decoder-only model gains more CER from history")
    assert measured.startswith(f"test {estimate('test', (do_s, 1), (do_l, -1), (ed_s, -1), (ed_l, 1)):+.2f} [")
    assert verdict.startswith("test: holds<br>dev: not measured")

    for system in ("decoder_only", "encoder_decoder"):
        assert claim_row(text, f"CoT NER F1 rises with the history K up to K = 2: {system}")[2:] == [
            "-", f"not measured: no history-sweep runs {system}/cot_k0 and {system}/cot_k2: run.sh --history_sweep "
                 '"0 1 2 3 4" (docs/speech_llms.md: "The history sweep")']
    assert claim_row(text, "The decoder-only model's attention share")[3].startswith("not measured: no history-sweep")
    assert claim_row(text, "Deeper cross-attention gates")[2:] == [
        "-", "not measured: encoder_decoder/short has 1 gated block(s), fewer than two"]


def test_claims_of_the_history_sweep_and_the_gates(recipe):
    entities = {u: f"[{t[:2]}]{t[2:]}" for u, t in REFS.items()}
    # K = 0 finds the entities of a third of the utterances, K = 2 of all
    decode(recipe, "decoder_only/cot_k0", "test", REFS, {u: t if i % 3 == 0 else REFS[u] for i, (u, t)
                                                         in enumerate(entities.items())})
    decode(recipe, "decoder_only/cot_k2", "test", REFS, entities)
    for phase, k, share in (("long_k0", 0, [0.4, 0.6]), ("long_k1", 1, [0.35, 0.55]), ("long_k2", 2, [0.3, 0.5]),
                            ("cot_k0", 0, [0.3, 0.5]), ("cot_k2", 2, [0.4, 0.5])):
        decode(recipe, f"decoder_only/{phase}", "test", REFS)
        (recipe / "exp" / "decoder_only" / phase / "speech_attention.json").write_text(json.dumps(
            {"set": "dev", "num_history": k, "layers": [0, 1], "share": share}))
    for phase, gates in (("short", [0.2, -0.5, 0.7]), ("long", [0.7, 0.1])):
        decode(recipe, f"encoder_decoder/{phase}", "test", REFS)
        (recipe / "exp" / "encoder_decoder" / phase / "gate_values.json").write_text(
            json.dumps({"layers": [1, 2, 3][:len(gates)], "gates": gates}))
    write_results(recipe / "exp", recipe / "RESULTS.md")
    text = (recipe / "RESULTS.md").read_text(encoding="utf-8")

    f1 = {k: json.loads((recipe / "exp" / "decoder_only" / f"cot_k{k}" / DECODING / "test" / "score_ner" / "result.json")
                        .read_text(encoding="utf-8"))["micro"]["f1"] for k in (0, 2)}
    _, _, measured, verdict = claim_row(text, "CoT NER F1 rises with the history K up to K = 2: decoder_only")
    assert measured.startswith(f"test {100 * (f1[2] - f1[0]):+.2f} [") and verdict.startswith("test: holds<br>dev: ")
    assert claim_row(text, "CoT NER F1 rises with the history K up to K = 2: encoder_decoder")[3].startswith(
        "not measured: no history-sweep runs encoder_decoder/cot_k0")
    assert claim_row(text, "The decoder-only model's attention share")[2:] == [
        "long (dev): K=0 0.500, K=1 0.450, K=2 0.400<br>cot (dev): K=0 0.400, K=2 0.450", "long: holds<br>cot: does not hold"]
    # |gate|: short's deeper half (0.7) against its shallower (0.2), the middle layer in neither; long's 0.1 against 0.7
    assert claim_row(text, "Deeper cross-attention gates")[2:] == [
        "encoder_decoder/short +0.500<br>encoder_decoder/long -0.600", "holds in 1 of 2 runs"]


def test_claims_against_the_conformer_baseline(recipe):
    marked = {u: f"[{t[:2]}]{t[2:]}" for u, t in REFS.items()}
    decode(recipe, "conformer/asr", "test", {u: with_errors(t, 2) for u, t in REFS.items()},
           {u: with_errors(t, 2) for u, t in REFS.items()})  # its entities all lost
    decode(recipe, "decoder_only/short", "test", REFS)
    decode(recipe, "decoder_only/cot", "test", {u: with_errors(t, 3) for u, t in REFS.items()}, marked)
    write_results(recipe / "exp", recipe / "RESULTS.md")
    text = (recipe / "RESULTS.md").read_text(encoding="utf-8")
    _, measure, measured, verdict = claim_row(text, "A speech LLM transcribes better than the Conformer baseline: "
                                                    "decoder_only/short")
    assert measure == "CER decoder_only/short − conformer/asr, points"
    assert measured == f"test {-result_cer(recipe, 'conformer/asr', 'test'):+.2f} [{-result_cer(recipe, 'conformer/asr', 'test'):+.2f}, " \
                       f"{-result_cer(recipe, 'conformer/asr', 'test'):+.2f}]"  # 2 errors on every utterance: every draw
    assert verdict == "test: holds<br>dev: not measured (decoder_only/short has no scored dev)"
    assert claim_row(text, "A speech LLM transcribes better than the Conformer baseline: decoder_only/cot")[3].startswith(
        "test: does not hold")
    assert claim_row(text, "A speech LLM transcribes better than the Conformer baseline: encoder_decoder/long")[2:] == [
        "-", "not measured: no run encoder_decoder/long"]
    _, _, measured, verdict = claim_row(text, "With CoT, a speech LLM finds entities better than the entity-aware "
                                              "Conformer: decoder_only/cot")
    assert measured.startswith("test +100.00 [") and verdict.startswith("test: holds")
