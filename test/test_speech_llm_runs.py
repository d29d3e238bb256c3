"""What run.sh reads of the speech LLM configs (espnet_llm.bin.speech_llm_runs), and the small command lines its
stages call: a marked text file without marks, a table split into N key files."""
import pytest
import yaml

from espnet_llm.bin import speech_llm_runs
from espnet_llm.data_prep import kaldi_dir
from espnet_llm.text.aishell_ner import strip_marks_of_table


def write_config(path, **overrides):
    config = {"speech_encoder_conf": {"model_path": "downloads/whisper", "pad_to_30s": False},
              "llm_conf": {"model_path": "downloads/tiny_models/chatglm3"},
              "prompt_task": "asr_long", "num_history": 2, "batch_type": "numel", "batch_bins": 600000}
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_configs_must_agree_on_the_whisper(tmp_path, capsys):
    short = write_config(tmp_path / "short.yaml")
    assert speech_llm_runs.main(["whisper", short, write_config(tmp_path / "long.yaml")]) == 0
    assert capsys.readouterr().out == "downloads/whisper false\n"
    padded = write_config(tmp_path / "cot.yaml", speech_encoder_conf={"model_path": "downloads/whisper",
                                                                      "pad_to_30s": True})
    assert speech_llm_runs.main(["whisper", short, padded]) == 1
    error = capsys.readouterr().err
    assert "dumps one Whisper's features for every speech LLM" in error and "pad_to_30s true" in error
    assert speech_llm_runs.main(["whisper", write_config(tmp_path / "none.yaml", speech_encoder_conf={})]) == 1
    assert "names no speech_encoder_conf model_path" in capsys.readouterr().err


def test_plan_scales_batch_bins_to_the_features(tiny_models, tmp_path, capsys):
    config = write_config(tmp_path / "long.yaml")
    width = speech_llm_runs.whisper_dim(str(tiny_models / "whisper"))
    args = ["plan", "--expdir", "exp", "--fs", "16000", "--dumpdir", "dump", "--train_set", "train",
            "--valid_set", "dev", f"decoder_only long {config} - short"]
    assert speech_llm_runs.main(args) == 0
    stats, opts, shapes = capsys.readouterr().out.rstrip("\n").split("\t")
    assert stats == "exp/stats/asr_long_history2_chatglm3"
    assert "dump/raw/train/wav.scp,speech,sound" in opts and "--speech_encoder" not in opts
    assert shapes.split()[:2] == ["--train_shape_file", f"{stats}/train/speech_shape"]
    cached = args[:-1] + ["--feature_cache", str(tiny_models / "whisper"), "--feats_dir", str(tmp_path / "feats"),
                          f"decoder_only long {config} - short"]
    assert speech_llm_runs.main(cached) == 0
    stats, opts, _ = capsys.readouterr().out.rstrip("\n").split("\t")
    assert stats == "exp/stats/asr_long_history2_chatglm3_whisper_feats"
    assert f"{tmp_path}/feats/dev/feats.scp,speech,kaldi_ark" in opts
    assert opts.endswith(f"--speech_encoder whisper_cached --speech_encoder_conf output_size={width} "
                         f"--batch_bins {600000 * 50 * width // 16000}")


def test_one_schedule_spans_the_phases_of_a_system(tmp_path, capsys):
    def stats(name, utterances):
        for part in ("train", "valid"):
            (tmp_path / "exp" / "stats" / name / part).mkdir(parents=True)
            for shape, n in (("speech_shape", 16000), ("text_shape", 9)):
                lines = "".join(f"utt{i} {n}\n" for i in range(utterances))
                (tmp_path / "exp" / "stats" / name / part / shape).write_text(lines)

    schedule = {"first_cycle_steps": None, "warmup_steps": 1, "max_lr": 1e-4, "min_lr": 1e-5}
    common = dict(model="decoder_only", batch_type="sorted", batch_size=5, scheduler_conf=schedule)
    short = write_config(tmp_path / "short.yaml", prompt_task="asr_short", num_history=0, max_epoch=3, **common)
    long = write_config(tmp_path / "long.yaml", max_epoch=2, **common)
    other = write_config(tmp_path / "other.yaml", model="encoder_decoder", max_epoch=2, batch_type="sorted",
                         batch_size=5, scheduler_conf={"warmup_steps": 1})
    twin = write_config(tmp_path / "twin.yaml", max_epoch=2, **common)  # another system of the same model
    args = ["plan", "--expdir", str(tmp_path / "exp"), "--fs", "16000", "--dumpdir", "dump", "--train_set", "train",
            "--valid_set", "dev", f"decoder_only short {short} - -", f"decoder_only long {long} - short",
            f"encoder_decoder long {other} - short", f"decoder_only_twin long {twin} - short"]
    assert speech_llm_runs.main(args) == 0
    assert "first_cycle_steps" not in capsys.readouterr().out  # no stats yet (stage 10 runs on this plan)
    stats("asr_short_history0_chatglm3", 10)  # 2 batches of 5, 3 epochs
    stats("asr_long_history2_chatglm3", 20)  # 4 batches, 2 epochs; shared with the other architecture's long phase
    assert speech_llm_runs.main(args) == 0
    training = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]
    assert training[0].endswith("--scheduler_conf first_cycle_steps=14")
    assert training[1].endswith("--scheduler_conf first_cycle_steps=14")
    assert "first_cycle_steps" not in training[2]  # its config sets its own schedule
    assert training[3].endswith("--scheduler_conf first_cycle_steps=8")  # another system: its own phase alone
    # a history sweep's chain: short (6 steps) and its own long (30 utterances: 6 batches, 2 epochs)
    stats("asr_long_history0_chatglm3", 30)
    assert speech_llm_runs.main(args + [f"decoder_only long_k0 {long} 0 short"]) == 0
    training = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]
    assert training[0].endswith("first_cycle_steps=14") and training[4].endswith("first_cycle_steps=18")
    # run.sh's --train_args follow the config in training: the plan counts what they make of it
    train_args = ["--train_args", "--max_epoch 1 --batch_size 10 --scheduler_conf warmup_steps=1"]
    assert speech_llm_runs.main(args[:1] + train_args + args[1:]) == 0
    training = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]
    assert training[0].endswith("first_cycle_steps=3")  # 1 batch of short + 2 of long, 1 epoch each


def test_a_missing_whisper_is_named(tmp_path):
    with pytest.raises(speech_llm_runs.ConfigError, match="stage 5 makes the tiny one"):
        speech_llm_runs.whisper_dim(str(tmp_path / "absent"))


def test_marks_are_stripped_from_the_transcripts_only(tmp_path):
    (tmp_path / "text_ner").write_text("a [张三]在(北京)\nb\nc <万科>\n", encoding="utf-8")
    strip_marks_of_table(tmp_path / "text_ner", tmp_path / "text")
    assert (tmp_path / "text").read_text(encoding="utf-8") == "a 张三在北京\nb\nc 万科\n"


def test_split_keys_writes_numbered_parts(tmp_path):
    (tmp_path / "wav.scp").write_text("".join(f"u{i} /x/{i}.wav\n" for i in range(5)))
    assert kaldi_dir.main(["split-keys", str(tmp_path / "wav.scp"), "2", str(tmp_path / "keys")]) == 0
    parts = [(tmp_path / f"keys.{n}.scp").read_text().splitlines() for n in (1, 2)]
    assert [len(p) for p in parts] == [2, 3] and parts[0][0] == "u0 /x/0.wav"


def test_a_run_decodes_the_features_it_was_trained_on(tmp_path):
    on_audio = write_config(tmp_path / "audio.yaml", speech_encoder="whisper")
    on_features = write_config(tmp_path / "features.yaml", speech_encoder="whisper_cached")
    (tmp_path / "feats" / "dev").mkdir(parents=True)
    (tmp_path / "feats" / "dev" / "feats.scp").write_text("")
    feats = str(tmp_path / "feats")
    assert speech_llm_runs.decode_features(on_audio, feats, ["dev", "test"]) is None
    assert speech_llm_runs.decode_features(on_features, feats, ["dev"]) == feats
    with pytest.raises(speech_llm_runs.ConfigError, match="test/feats.scp is not there: run stage 6"):
        speech_llm_runs.decode_features(on_features, feats, ["dev", "test"])


def test_the_history_sweep_plans_a_run_directory_per_k_from_the_right_model(capsys):
    assert speech_llm_runs.main(["runs", "--conf_dir", "conf/tiny", "--phases", "short long cot",
                                 "--history_sweep", "0 4", "decoder_only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "decoder_only short conf/tiny/train_decoder_only_short.yaml - -",
        "decoder_only long conf/tiny/train_decoder_only_long.yaml - short",
        "decoder_only cot conf/tiny/train_decoder_only_cot.yaml - long",
        "decoder_only long_k0 conf/tiny/train_decoder_only_long.yaml 0 short",  # long of every K from short
        "decoder_only cot_k0 conf/tiny/train_decoder_only_cot.yaml 0 long_k0",  # cot from the long of its K
        "decoder_only long_k4 conf/tiny/train_decoder_only_long.yaml 4 short",
        "decoder_only cot_k4 conf/tiny/train_decoder_only_cot.yaml 4 long_k4",
    ]
    assert [speech_llm_runs.Run.parse(line).line() for line in lines] == lines
    # without a sweep, the runs are the phases alone (the default command is unchanged)
    assert [r.name for r in speech_llm_runs.system_runs("encoder_decoder", ["long", "cot"], "conf")] == ["long", "cot"]
    # the sweep follows --llm_phases: the long phase alone, once per K
    assert [r.line() for r in speech_llm_runs.system_runs("encoder_decoder", ["long"], "conf", None, [1])] == [
        "encoder_decoder long conf/train_encoder_decoder_long.yaml - short",
        "encoder_decoder long_k1 conf/train_encoder_decoder_long.yaml 1 short"]
    with pytest.raises(speech_llm_runs.ConfigError, match="--llm_phases 'short' names neither"):
        speech_llm_runs.system_runs("decoder_only", ["short"], "conf", None, [1])
    assert speech_llm_runs.main(["runs", "--conf_dir", "conf", "--phases", "long", "--history_sweep", "1 -2",
                                 "decoder_only"]) == 1
    assert "--history_sweep '1 -2': must be whole numbers" in capsys.readouterr().err


def test_a_sweep_run_overrides_num_history_in_its_stats_and_options(tmp_path, capsys):
    config = write_config(tmp_path / "long.yaml")  # num_history 2
    args = ["plan", "--expdir", "exp", "--fs", "16000", "--dumpdir", "dump", "--train_set", "train",
            "--valid_set", "dev", f"decoder_only long {config} - short", f"decoder_only long_k4 {config} 4 short",
            f"encoder_decoder long_k4 {config} 4 short", f"decoder_only long_k0 {config} 0 short"]
    assert speech_llm_runs.main(args) == 0
    plans = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [p[0] for p in plans] == ["exp/stats/asr_long_history2_chatglm3", "exp/stats/asr_long_history4_chatglm3",
                                     "exp/stats/asr_long_history4_chatglm3", "exp/stats/asr_long_history0_chatglm3"]
    assert "--num_history" not in plans[0][1]
    assert plans[1][1].endswith("--num_history 4") and plans[3][1].endswith("--num_history 0")
    assert plans[1][2].split()[1] == "exp/stats/asr_long_history4_chatglm3/train/speech_shape"


def test_the_sweep_needs_the_history_in_the_data(tmp_path):
    short = write_config(tmp_path / "short.yaml", prompt_task="asr_short", num_history=0)
    long = write_config(tmp_path / "long.yaml")
    runs = [speech_llm_runs.Run("decoder_only", "short", short, None, None),
            speech_llm_runs.Run("decoder_only", "long", long, None, "short"),
            speech_llm_runs.Run("decoder_only", "long_k4", long, 4, "short")]
    speech_llm_runs.history_check(runs[:2], history_k=2)
    with pytest.raises(speech_llm_runs.ConfigError, match=r"--history_k 3: .* up to 4 .*long_k4\): use --history_k 4"):
        speech_llm_runs.history_check(runs, history_k=3)
    (tmp_path / "utt2history").write_text("a\nb a\nc a b\nd a b c\n")
    speech_llm_runs.history_check(runs[:2], utt2history=[str(tmp_path / "utt2history")])
    with pytest.raises(speech_llm_runs.ConfigError, match="holds at most 3 history utterances, and the runs read up "
                                                          "to 4: run the data stages again from stage 1 with --history_k 4"):
        speech_llm_runs.history_check(runs, utt2history=[str(tmp_path / "utt2history")])
