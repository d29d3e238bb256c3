"""CER scoring (sclite and its fallback), the NER metric and its error breakdown, RESULTS.md."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess

import pytest

from espnet_llm.scoring.alignment import count_errors
from espnet_llm.scoring.cer import (
    ErrorCounts,
    ScliteError,
    find_sclite,
    parse_sclite_counts,
    read_kaldi_text,
    read_utterance_counts,
    score_cer,
)
from espnet_llm.scoring.ner import score_ner
from espnet_llm.scoring.results import read_epoch_stats, write_results

SCLITE = find_sclite()
DECODING = "decode_speech_llm_valid.acc_current.ave"  # <run>/<inference tag>/<set>, as asr.sh lays it out
needs_sclite = pytest.mark.skipif(SCLITE is None, reason="sclite not installed (apt-get install -y sctk)")


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- CER

# insertions, deletions, substitutions, an empty hypothesis, a missing one (u5), one without a
# reference (u9), marks and full-width letters that scoring removes or maps, ASCII case
CER_REFS = ["u1 北京欢迎你", "u2 [张三]去<清华大学>", "u3 今天天气很好", "u4 你好", "u5 再见了",
            "u6 OK了吗", "u7 ＫＴＶ里(北京)人"]
CER_HYPS = ["u1 北京欢迎您们", "u2 张三去(清华)大学呀", "u3", "u4 你好", "u6 ok吗", "u7 KTV理北京人",
            "u9 多余的"]
CER_UTT2SPK = ["u1 s1", "u2 s1", "u3 s1", "u4 s2", "u5 s2", "u6 s2", "u7 s2"]


@pytest.fixture
def cer_case(tmp_path):
    (tmp_path / "data").mkdir()
    ref = write_lines(tmp_path / "data" / "text", CER_REFS)
    write_lines(tmp_path / "data" / "utt2spk", CER_UTT2SPK)
    hyp = write_lines(tmp_path / "hyp_text", CER_HYPS)
    return ref, hyp


def test_cer_counts_by_hand(cer_case, tmp_path):
    ref, hyp = cer_case
    result = score_cer(ref, hyp, tmp_path / "fb", backend="fallback")
    # u1 C4 S1 I1 | u2 C7 I1 | u3 D6 | u4 C2 | u5 D3 (missing) | u6 C3 D1 | u7 C6 S1
    assert result.counts == ErrorCounts(sentences=7, words=34, correct=22, substitutions=2, deletions=10,
                                        insertions=2, sentence_errors=6)
    assert result.missing_hypotheses == ["u5"] and result.extra_hypotheses == ["u9"]
    assert result.counts.table_row("test") == "|test|7|34|64.7|5.9|29.4|5.9|41.2|85.7|"
    ref_trn = (tmp_path / "fb" / "ref.trn").read_text(encoding="utf-8").splitlines()
    hyp_trn = (tmp_path / "fb" / "hyp.trn").read_text(encoding="utf-8").splitlines()
    assert ref_trn[1] == "张 三 去 清 华 大 学\t(s1-u2)"
    assert ref_trn[6] == "K T V 里 北 京 人\t(s2-u7)"
    assert hyp_trn[4] == "\t(s2-u5)"  # the missing hypothesis, written empty
    saved = json.loads((tmp_path / "fb" / "result.json").read_text(encoding="utf-8"))
    assert saved["counts"]["deletions"] == 10 and saved["missing_hypotheses"] == ["u5"]


@needs_sclite
def test_sclite_and_fallback_agree(cer_case, tmp_path):
    ref, hyp = cer_case
    by_sclite = score_cer(ref, hyp, tmp_path / "sclite", backend="sclite")
    by_fallback = score_cer(ref, hyp, tmp_path / "fallback", backend="fallback")
    assert by_sclite.backend == "sclite" and by_fallback.backend == "fallback"
    assert by_sclite.counts == by_fallback.counts
    # ESPnet's table is read off sclite's Sum/Avg percentage line: ours must print the same figures
    sclite_out = (tmp_path / "sclite" / "result.txt").read_text(encoding="utf-8")
    avg = re.search(r"\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|([^|]*)\|", sclite_out)
    assert by_fallback.counts.table_row("x") == "|x|" + "|".join([avg[1], avg[2]] + avg[3].split()) + "|"


@pytest.mark.parametrize("backend", ["fallback", pytest.param("sclite", marks=needs_sclite)])
def test_result_txt_has_every_reference_utterances_counts(cer_case, tmp_path, backend):
    ref, hyp = cer_case
    score_cer(ref, hyp, tmp_path / "score", backend=backend)
    # u5 is missing (all deleted), u9 has no reference
    assert read_utterance_counts(tmp_path / "score" / "result.txt") == {
        "(s1-u1)": (4, 1, 0, 1), "(s1-u2)": (7, 0, 0, 1), "(s1-u3)": (0, 0, 6, 0), "(s2-u4)": (2, 0, 0, 0),
        "(s2-u5)": (0, 0, 3, 0), "(s2-u6)": (3, 0, 1, 0), "(s2-u7)": (6, 1, 0, 0)}
    # AISHELL's ids are upper case: sclite prints them lower-cased, and the fallback's are read so too
    upper = write_lines(tmp_path / "upper_text", ["BAC009S0002W0122 你好"])
    score_cer(upper, write_lines(tmp_path / "upper_hyp", ["BAC009S0002W0122 你"]), tmp_path / "upper_score",
              backend=backend)
    assert read_utterance_counts(tmp_path / "upper_score" / "result.txt") == {
        "(bac009s0002w0122-bac009s0002w0122)": (1, 0, 1, 0)}


@needs_sclite
def test_alignment_agrees_with_sclite_per_utterance(tmp_path):
    """Random text over a small alphabet: many ties, where a unit-cost aligner would differ."""
    rng = random.Random(0)
    pairs = [([rng.choice("abc") for _ in range(rng.randint(0, 10))],
              [rng.choice("abc") for _ in range(rng.randint(0, 10))]) for _ in range(600)]
    write_lines(tmp_path / "r.trn", [" ".join(r) + f"\t(s-u{i:04d})" for i, (r, _) in enumerate(pairs)])
    write_lines(tmp_path / "h.trn", [" ".join(h) + f"\t(s-u{i:04d})" for i, (_, h) in enumerate(pairs)])
    out = subprocess.run([SCLITE, "-r", str(tmp_path / "r.trn"), "trn", "-h", str(tmp_path / "h.trn"), "trn",
                          "-i", "rm", "-o", "pralign", "stdout"], capture_output=True, text=True, check=True).stdout
    sclite_counts = {int(m[1]): tuple(map(int, m.groups()[1:])) for m in
                     re.finditer(r"id: \(s-u(\d+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", out)}
    assert len(sclite_counts) == len(pairs)
    assert [count_errors(r, h) for r, h in pairs] == [sclite_counts[i] for i in range(len(pairs))]


def test_alignment_cost_model():
    # sclite's weights (sub 4, ins/del 3) keep the match of 'b' rather than two substitutions
    assert count_errors(list("ab"), list("bc")) == (1, 0, 1, 1)
    assert count_errors([], list("ab")) == (0, 0, 0, 2)
    assert count_errors(list("Ab"), list("aB")) == (2, 0, 0, 0)  # ASCII case is folded, as sclite does
    assert count_errors(["Ä"], ["ä"]) == (0, 1, 0, 0)


def test_bad_inputs_name_file_and_line(tmp_path):
    text = write_lines(tmp_path / "text", ["u1 你好", "u2 再见", "u1 又是你"])
    with pytest.raises(ValueError, match=r"text:3: utterance id u1 appears twice"):
        read_kaldi_text(text)
    with pytest.raises(ScliteError, match="no 'Sum' line"):
        parse_sclite_counts("sclite: nothing here")


# ---------------------------------------------------------------------------------------------- NER

def ner(tmp_path, refs, hyps):
    ref = write_lines(tmp_path / "ref_text_ner", [f"u{i} {t}" for i, t in enumerate(refs)])
    hyp = write_lines(tmp_path / "hyp_text_ner", [f"u{i} {t}" for i, t in enumerate(hyps) if t is not None])
    score_ner(ref, hyp, tmp_path / "score_ner")
    result = json.loads((tmp_path / "score_ner" / "result.json").read_text(encoding="utf-8"))
    # every entity is accounted for exactly once
    errors = result["errors"]
    for t, s in result["per_type"].items():
        assert s["ref"] == s["correct"] + sum(errors[k][t] for k in ("omitted", "wrong_text", "wrong_type"))
    for t, s in result["per_type"].items():
        hyp_err = sum(1 for line in (tmp_path / "score_ner" / "errors.txt").read_text(encoding="utf-8").splitlines()
                      if not line.startswith("#") and line.split("\t")[3].startswith(t + ":"))
        assert s["hyp"] == s["correct"] + hyp_err
    return result


def error_totals(result):
    return {k: sum(v.values()) for k, v in result["errors"].items()}


def test_ner_exact_and_in_a_wrong_place(tmp_path):
    # position does not count: 北京 marked at the other occurrence, and with its context misrecognised
    r = ner(tmp_path, ["(北京)人在北京[李四]说", "<清华大学>的老师"], ["北京人在(北京)[李四]说", "<清华大学>得老湿"])
    assert r["micro"]["correct"] == 3 and r["micro"]["f1"] == 1.0
    assert error_totals(r) == {"omitted": 0, "wrong_text": 0, "wrong_type": 0, "false_alarm": 0}


def test_ner_repeated_entities_are_a_multiset(tmp_path):
    r = ner(tmp_path, ["[张三]见了[张三]和[李四]", "(北京)"], ["[张三]见了张三和[李四]", "(北京)到(北京)"])
    assert r["per_type"]["PER"] == {"ref": 3, "hyp": 2, "correct": 2, "precision": 1.0,
                                    "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8)}
    assert r["per_type"]["LOC"]["correct"] == 1 and r["per_type"]["LOC"]["hyp"] == 2
    assert r["errors"]["omitted"]["PER"] == 1 and r["errors"]["false_alarm"]["LOC"] == 1
    assert r["micro"]["precision"] == pytest.approx(3 / 4) and r["micro"]["recall"] == pytest.approx(3 / 4)


def test_ner_error_breakdown(tmp_path):
    r = ner(tmp_path,
            ["[张三]在<清华大学>", "(上海)的朋友", "<北京大学>好", "今天很好", "[李明]来了"],
            ["<张三>在<清华>大学", "上海的(朋友)", "(北京)大学好", "[今天]很好", "[李鸣]来了"])
    assert r["micro"]["correct"] == 0
    assert error_totals(r) == {"omitted": 1, "wrong_text": 2, "wrong_type": 2, "false_alarm": 2}
    assert r["errors"]["wrong_type"] == {"PER": 1, "LOC": 0, "ORG": 1}  # by reference type
    assert r["errors"]["wrong_text"] == {"PER": 1, "LOC": 0, "ORG": 1}
    assert r["errors"]["omitted"]["LOC"] == 1  # 上海 not marked; 朋友 elsewhere is a false alarm
    assert r["errors"]["false_alarm"] == {"PER": 1, "LOC": 1, "ORG": 0}
    lines = (tmp_path / "score_ner" / "errors.txt").read_text(encoding="utf-8").splitlines()
    assert "u0\twrong_type\tPER:张三\tORG:张三" in lines
    assert "u0\twrong_text\tORG:清华大学\tORG:清华" in lines
    assert "u2\twrong_type\tORG:北京大学\tLOC:北京" in lines  # overlapping, type and text wrong


def test_ner_empty_missing_and_malformed_hypotheses(tmp_path):
    r = ner(tmp_path, ["[张三]说", "(北京)欢迎你", "<腾讯>公司", "[王五]"], ["张三说", None, "<腾讯公司", "[王五]]"])
    assert r["micro"] == {"ref": 4, "hyp": 1, "correct": 1, "precision": 1.0, "recall": 0.25, "f1": 0.4}
    assert r["missing_hypotheses"] == ["u1"]
    assert sorted(r["malformed_hypotheses"]) == ["u2", "u3"]
    per_utterance = json.loads((tmp_path / "score_ner" / "utterances.json").read_text(encoding="utf-8"))
    assert per_utterance == {"u0": {"correct": 0, "hyp": 0, "ref": 1}, "u1": {"correct": 0, "hyp": 0, "ref": 1},
                             "u2": {"correct": 0, "hyp": 0, "ref": 1}, "u3": {"correct": 1, "hyp": 1, "ref": 1}}
    assert error_totals(r)["omitted"] == 3
    # no hypothesis entities at all: precision is 0, not a division error
    r = ner(tmp_path, ["[张三]说"], [""])
    assert r["micro"]["precision"] == 0.0 and r["micro"]["f1"] == 0.0


def test_ner_warning_names_a_few_utterances_in_one_console_line(tmp_path, caplog):
    ids = [f"BAC009S0736W{n:04d}" for n in range(12)]
    ref = write_lines(tmp_path / "ref", [f"{u} [张三]在北京" for u in ids])
    hyp = write_lines(tmp_path / "hyp", [f"{u} [张三在北京" for u in ids])  # every mark left open
    result = score_ner(ref, hyp, tmp_path / "ner")
    assert sorted(result.malformed_hypotheses) == ids  # result.json has them all
    warning, = [r.getMessage() for r in caplog.records if "malformed marks" in r.getMessage()]
    assert warning.rsplit(": ", 1)[1] == " ".join(ids[:5]) + " ..."  # five named: the line stays short


def test_ner_malformed_reference_is_reported_and_left_out(tmp_path):
    r = ner(tmp_path, ["[张三说", "(北京)"], ["[张三]说", "(北京)"])
    assert r["utterances"] == 1 and r["micro"]["ref"] == 1
    assert json.loads((tmp_path / "score_ner" / "utterances.json").read_text(encoding="utf-8")) == {
        "u1": {"correct": 1, "hyp": 1, "ref": 1}}
    assert "ref_text_ner:1:" in r["malformed_references"]["u0"]


# ---------------------------------------------------------------------------------------- RESULTS.md

def espnet_train_log(path, epochs, listening=False):
    """A train.log with the per-epoch lines that ESPnet's own Reporter writes; listening: with the speech
    LLMs' validation figures of the current utterance and of another utterance's speech."""
    from espnet2.train.reporter import Reporter

    reporter, lines = Reporter(), []
    for epoch in range(1, epochs + 1):
        reporter.set_epoch(epoch)
        for key, loss, acc in (("train", 50.0 / epoch, 0.1 * epoch), ("valid", 60.0 / epoch, 0.08 * epoch)):
            with reporter.observe(key) as sub:
                stats = {"loss": loss, "acc": acc}
                if listening and key == "valid":
                    stats.update(acc_current=acc / 2, loss_other_speech=loss + epoch, speech_reliance=float(epoch))
                sub.register(stats)
                sub.next()
        lines.append(f"[host] 2025-01-01 00:00:00,000 (trainer:394) INFO: {reporter.log_message()}")
    write_lines(path, ["[host] some other line"] + lines)


def test_results_md_from_scored_expdir(tmp_path, cer_case):
    ref, hyp = cer_case
    refs_ner = write_lines(tmp_path / "ref_ner", ["u1 [张三]说", "u2 (北京)"])
    exp = tmp_path / "exp"
    hyps_by_run = {("conformer", "asr"): ["u1 [张三]说", "u2 (北京)"],
                   ("decoder_only", "short"): ["u1 张三说", "u2 (北京)"],
                   ("decoder_only", "cot"): ["u1 [张三]说"]}
    for (system, phase), hyps_ner in hyps_by_run.items():
        for data_set in ("dev", "test"):
            decode = exp / system / phase / DECODING / data_set
            score_cer(ref, hyp, decode / "score_cer", backend="fallback")
            score_ner(refs_ner, write_lines(tmp_path / "hyp_ner", hyps_ner), decode / "score_ner")
    espnet_train_log(exp / "decoder_only" / "short" / "train.log", epochs=3)
    (exp / "decoder_only" / "cot" / "gate_values.json").write_text(json.dumps({"gates": [0.1, -0.3, 0.5]}))
    (exp / "decoder_only" / "cot" / "config.yaml").write_text("model: encoder_decoder\nnum_history: 2\n")
    (exp / "decoder_only" / "short" / "gate_values.json").write_text(
        json.dumps({"gates": [0.7, 0.2], "gate": "dynamic", "num_history": 0}))

    out = tmp_path / "recipe" / "RESULTS.md"
    out.parent.mkdir()
    summary = write_results(exp, out)
    text = out.read_text(encoding="utf-8")

    assert "## Environments" in text and "- pytorch version: `pytorch " in text and "- Git hash: `" in text
    rows = [line for line in summary.splitlines() if line.startswith("|") and "---" not in line][1:]
    assert [row.split("|")[1:3] for row in rows] == [["conformer", "asr"], ["decoder_only", "short"],
                                                     ["decoder_only", "cot"]]
    # CER 41.2 on dev and test; NER micro P/R/F1 of each system
    assert rows[0] == "|conformer|asr|-|-|-|41.2|41.2|100.0|100.0|100.0|100.0|100.0|100.0|"
    assert rows[1] == "|decoder_only|short|-|-|-|41.2|41.2|100.0|50.0|66.7|100.0|50.0|66.7|"
    assert f"|{DECODING}/dev|7|34|64.7|5.9|29.4|5.9|41.2|85.7|" in text
    assert "|omitted entity|0|1|0|1|" in text  # decoder_only/cot: u2 missing, so 北京 omitted
    assert "|omitted entity|1|0|0|1|" in text  # decoder_only/short: 张三 not marked
    assert "Input problems: 1 missing hypotheses" in text
    gates = text[text.index("## Gate values"):text.index("## conformer")]  # K from the gate file, or the run's config
    assert "|system|phase|gate|K|layer 0|layer 1|layer 2|" in gates
    assert "|decoder_only|short|dynamic|0|+0.700|+0.200|-|" in gates and "|decoder_only|cot|static|2|+0.100|-0.300|+0.500|" in gates
    for png in ("decoder_only_short_curves.png", "decoder_only_cot_gates.png"):
        assert f"(results_images/{png})" in text
        assert (out.parent / "results_images" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_epoch_stats(exp / "decoder_only" / "short" / "train.log")[3]["valid"]["loss"] == 20.0


def test_results_md_lists_how_much_each_run_listens(tmp_path, cer_case):
    ref, hyp = cer_case
    exp = tmp_path / "exp"
    for system, phase in (("conformer", "asr"), ("encoder_decoder", "long")):
        score_cer(ref, hyp, exp / system / phase / DECODING / "dev" / "score_cer", backend="fallback")
        espnet_train_log(exp / system / phase / "train.log", epochs=4, listening=system != "conformer")
    write_results(exp, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    table = text[text.index("## Listening"):text.index("## conformer")]
    # the last epoch's: valid loss 60 / 4, acc 0.08 * 4; the Conformer reports no speech reliance: no row
    assert "|encoder_decoder|long|4|0.320|0.160|15.000|19.000|4.000|" in table and "conformer" not in table


def test_results_md_counts_the_parser_repairs_of_each_decoding(tmp_path, cer_case):
    ref, hyp = cer_case
    exp = tmp_path / "exp"
    jobs = {  # decoding jobs' parse_repairs.json (run.sh: <decoding>/<set>/logdir/output.<n>/), summed per set
        ("decoder_only", "cot", "dev"): [
            {"utterances": 4, "broken": 0, "with_problems": 2, "problems": {"truncated": 1, "repetition": 1}},
            {"utterances": 3, "broken": 1, "with_problems": 1, "problems": {"truncated": 1, "ner_fallback_text": 1}},
        ],
        ("decoder_only", "cot", "test"): [{"utterances": 7, "broken": 0, "with_problems": 0, "problems": {}}],
    }
    for system, phase, data_set in [("conformer", "asr", "dev"), *jobs]:
        decode = exp / system / phase / DECODING / data_set
        score_cer(ref, hyp, decode / "score_cer", backend="fallback")
        for n, counts in enumerate(jobs.get((system, phase, data_set), []), 1):
            (decode / "logdir" / f"output.{n}").mkdir(parents=True)
            (decode / "logdir" / f"output.{n}" / "parse_repairs.json").write_text(json.dumps(counts))
    out = tmp_path / "RESULTS.md"
    summary = write_results(exp, out)
    text = out.read_text(encoding="utf-8")
    assert summary in text and "|conformer|asr|-|-|-|41.2|" in summary  # the summary stays as it was
    table = text.split("## Parser repairs\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows == [
        "|system|phase|set|utterances|repaired|truncated|repetition|ner_fallback_text|",
        "|---|---|---|---|---|---|---|---|",
        "|decoder_only|cot|dev|7|3|2|1|1|",  # the conformer has no parser: no row
        "|decoder_only|cot|test|7|0|0|0|0|",
    ]
    assert "- `truncated`: no end token within max_new_tokens" in table


def test_every_decoding_is_a_summary_row_naming_config_beam_and_model(tmp_path, cer_case):
    """A run decoded two ways (stage 12 with another --inference_args) keeps both decodings: each a summary row
    with its decode config, beam and model file; the sections below read the latest (its text written last)."""
    ref, hyp = cer_case
    recipe = tmp_path / "recipe"
    write_lines(recipe / "conf" / "decode_speech_llm.yaml", ["beam_size: 4"])
    model = "exp/decoder_only/short/valid.acc_current.ave.pth"
    options = {"decode_speech_llm_valid.acc_current.ave": ["--config", "conf/decode_speech_llm.yaml"],
               "decode_speech_llm_beam_size1_valid.acc_current.ave": ["--config", "conf/decode_speech_llm.yaml",
                                                                      "--beam_size", "1"]}
    for age, (tag, args) in enumerate(options.items()):
        decode = recipe / "exp" / "decoder_only" / "short" / tag / "dev"
        write_lines(decode / "inference_options", ["espnet_llm.bin.speech_llm_inference",
                                                   "--speech_llm_model_file", model, *args])
        hyps = write_lines(decode / "text", hyp.read_text(encoding="utf-8").splitlines()[:age + 1])
        os.utime(hyps, (1_000_000 + age, 1_000_000 + age))  # the beam-1 decoding written last
        score_cer(ref, hyps, decode / "score_cer", backend="fallback")
    out = recipe / "RESULTS.md"
    summary = write_results(recipe / "exp", out)
    rows = [line for line in summary.splitlines() if line.startswith("|decoder_only")]
    assert [row.split("|")[3:6] for row in rows] == [["decode_speech_llm.yaml", "1", "valid.acc_current.ave.pth"],
                                                     ["decode_speech_llm.yaml", "4", "valid.acc_current.ave.pth"]]
    assert rows[0].split("|")[6] != rows[1].split("|")[6]  # each its own CER
    text = out.read_text(encoding="utf-8")
    section = text[text.index("## decoder_only/short"):]
    assert ("- decoding: `decode_speech_llm_beam_size1_valid.acc_current.ave` (decode_speech_llm.yaml, beam 1, model "
            "valid.acc_current.ave.pth)") in section
    assert all(f"|{tag}/dev|" in section for tag in options)


def test_results_without_scores_is_an_error(tmp_path):
    (tmp_path / "exp").mkdir()
    with pytest.raises(FileNotFoundError, match="no decode_<tag>/<set>"):
        write_results(tmp_path / "exp", tmp_path / "RESULTS.md")


def test_results_md_has_the_history_sweep_and_figure_2(tmp_path, cer_case):
    ref, hyp = cer_case
    refs_ner = write_lines(tmp_path / "ref_ner", ["u1 [张三]说", "u2 (北京)"])
    exp = tmp_path / "exp"
    hyps_ner = {"cot_k0": ["u1 张三说", "u2 北京"], "cot_k3": ["u1 [张三]说", "u2 (北京)"]}  # F1 0 and 100
    for phase in ("long", "long_k3", "long_k0", "cot_k3", "cot_k0"):
        decode = exp / "decoder_only" / phase / DECODING / "dev"
        score_cer(ref, hyp, decode / "score_cer", backend="fallback")
        if phase in hyps_ner:
            score_ner(refs_ner, write_lines(tmp_path / "hyp_ner", hyps_ner[phase]), decode / "score_ner")
    for phase, k, share in (("long_k0", 0, [0.5, 0.25]), ("long_k3", 3, [0.75, 0.125])):
        (exp / "decoder_only" / phase / "speech_attention.json").write_text(json.dumps(
            {"set": "dev", "num_history": k, "layers": [0, 1], "share": share, "tokens": 9, "utterances": 2}))
    for phase, gates in (("short", [0.79, 0.74]), ("cot", [0.8, 0.72])):
        score_cer(ref, hyp, exp / "encoder_decoder" / phase / DECODING / "dev" / "score_cer", backend="fallback")
        (exp / "encoder_decoder" / phase / "gate_values.json").write_text(json.dumps({"layers": [0, 1], "gates": gates}))
    write_results(exp, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")

    sweep = text[text.index("## History sweep"):text.index("## Gate values")]
    rows = [line for line in sweep.splitlines() if line.startswith("|decoder_only")]
    assert rows == ["|decoder_only|long|0|41.2|-|", "|decoder_only|long|3|41.2|-|",  # by phase, then K; the
                    "|decoder_only|cot|0|41.2|0.0|", "|decoder_only|cot|3|41.2|100.0|"]  # main long is no K
    gates = text[text.index("## Gate values"):text.index("## Attention on speech")]
    assert "|encoder_decoder|short|static|-|+0.790|+0.740|" in gates and "|encoder_decoder|cot|static|-|+0.800|+0.720|" in gates
    assert gates.count("|encoder_decoder|") == 2  # one table of the gates
    attention = text[text.index("## Attention on speech"):text.index("## decoder_only/long\n")]
    assert [line for line in attention.splitlines() if line.startswith("|decoder_only")] == [
        "|decoder_only/long_k0 (K=0, dev)|0.500|0.250|", "|decoder_only/long_k3 (K=3, dev)|0.750|0.125|"]
    sections = [line for line in text.splitlines() if line.startswith("## decoder_only/")]
    assert sections == ["## decoder_only/long", "## decoder_only/long_k0", "## decoder_only/long_k3",
                        "## decoder_only/cot_k0", "## decoder_only/cot_k3"]
    for png in ("history_sweep.png", "gates_all_runs.png", "speech_attention.png"):
        assert f"(results_images/{png})" in text
        assert (tmp_path / "results_images" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
