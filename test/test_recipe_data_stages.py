"""The recipe's data stages and shell helpers: utils/parse_options.sh, utils/run.pl, stages 2-5 on a
generated data directory with bad input, and ./run.sh --stage 1 --stop_stage 5 on the mini corpus.

The recipe runs in a temporary directory of symlinks to egs2/aishell_ner/llm1 (run.sh, path.sh, ...),
so data/, dump/ and downloads/ are written there and the checkout stays clean.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_llm.data_prep.format_audio import format_wav_scp
from espnet_llm.data_prep.kaldi_dir import read_table, validate_data_dir
from espnet_llm.data_prep.length_filter import removal_reasons
from espnet_llm.data_prep.speed_perturb import sox_speed_command
from espnet_llm.data_prep.summary import summarize_data_dir
from espnet_llm.text.aishell_ner import parse_marked

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1"
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (tools/setup.sh installs it)")


def recipe_copy(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh", "conf", "local", "utils"):
        if (RECIPE / name).exists():
            (root / name).symlink_to(RECIPE / name)
    return root


def run(cmd, cwd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------------------------------------------
# utils/parse_options.sh


@pytest.fixture
def options_script(tmp_path):
    recipe_copy(tmp_path)
    script = tmp_path / "opts.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "stage=1\nspeed_perturb_factors=\nuse_lm=false\n"
        'help_message="Usage: opts.sh [--stage N]"\n'
        ". utils/parse_options.sh || exit 1\n"
        'echo "stage=${stage} factors=${speed_perturb_factors} use_lm=${use_lm} rest=$*"\n')
    script.chmod(0o755)
    return script


def test_parse_options_sets_existing_variables(options_script, tmp_path):
    result = run([str(options_script), "--stage", "3", "--speed-perturb-factors", "0.9 1.1", "--use_lm=true", "a", "b"],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stage=3 factors=0.9 1.1 use_lm=true rest=a b"
    (tmp_path / "my.conf").write_text("stage=7\nuse_lm=true\n")
    result = run([str(options_script), "--config", "my.conf", "--stage", "8", "--", "--stage"], tmp_path)
    assert result.stdout.strip() == "stage=8 factors= use_lm=true rest=--stage"
    result = run([str(options_script), "--help"], tmp_path)
    assert result.returncode == 0 and "Usage: opts.sh" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--stgae", "3"], "unknown option --stgae"),
    (["--use_lm", "yes"], "option --use_lm takes true or false, got 'yes'"),
    (["--stage"], "option --stage needs a value"),
    (["--config", "missing.conf"], "config file missing.conf not found"),
    # set, but not the script's: an environment variable (--PATH x broke path.sh), bash's own, an exported one
    (["--PATH", "/x"], "unknown option --PATH (not an option of"),
    (["--SECONDS", "1"], "unknown option --SECONDS (not an option of"),
    (["--home", "/x"], "unknown option --home (not an option of"),
])
def test_parse_options_rejects_bad_options(options_script, tmp_path, args, message):
    result = run([str(options_script), *args], tmp_path, env={**os.environ, "home": "/elsewhere"})
    assert result.returncode == 1 and message in result.stderr


@pytest.mark.parametrize("line, message", [
    ("stgae=3", "unknown option --stgae (my.conf line 2)"),
    ("n_j=1", "unknown option --n_j (my.conf line 2)"),
    ("PATH=", "unknown option --PATH (my.conf line 2) (not an option of"),
    ("use_lm=yes", "option --use_lm (my.conf line 2) takes true or false, got 'yes'"),
    ("stage 3", "my.conf line 2: expected name=value, got 'stage 3'"),
])
def test_a_config_file_is_checked_line_by_line_as_the_command_line_is(options_script, tmp_path, line, message):
    (tmp_path / "my.conf").write_text(f"# options\n{line}\nstage=4\n")
    result = run([str(options_script), "--config", "my.conf"], tmp_path)
    assert result.returncode == 1 and message in result.stderr and "stage=" not in result.stdout


# ------------------------------------------------------------------------------------------------
# utils/run.pl


def test_run_pl_runs_jobs_in_parallel_with_per_job_logs(tmp_path):
    # Each job marks its start, waits, and counts the jobs started so far: all 3 when they run together.
    job = "touch started.JOB; sleep 0.5; ls started.* | wc -l; echo 'with space'"
    result = run([str(RECIPE / "utils" / "run.pl"), "JOB=1:3", "log/job.JOB.log", "bash", "-c", job], tmp_path)
    assert result.returncode == 0, result.stderr
    for index in (1, 2, 3):
        log = lines(tmp_path / "log" / f"job.{index}.log")
        assert log[0] == f"# bash -c 'touch started.{index}; sleep 0.5; ls started.* | wc -l; echo '\"'\"'with space'\"'\"''"
        assert log[3:5] == ["3", "with space"]
        assert log[-1].startswith("# Ended (code 0) at")
    (tmp_path / "serial").mkdir()
    result = run([str(RECIPE / "utils" / "run.pl"), "--max-jobs-run", "1", "--mem", "4G", "JOB=1:2", "log/s.JOB.log",
                  "bash", "-c", job], tmp_path / "serial")
    assert result.returncode == 0, result.stderr
    assert lines(tmp_path / "serial" / "log" / "s.1.log")[3] == "1"


def test_run_pl_passes_pipes_and_reports_failed_jobs(tmp_path):
    result = run([str(RECIPE / "utils" / "run.pl"), "N=1:4", "logs/n.N.log", "echo", "value-N", "|", "tr", "a-z", "A-Z",
                  "&&", "test", "N", "-ne", "2", "&&", "test", "N", "-ne", "4"], tmp_path)
    assert result.returncode == 1
    assert "run.pl: 2 / 4 failed, log is in logs/n.*.log" in result.stderr
    assert "job 2 (code 1, logs/n.2.log), job 4 (code 1, logs/n.4.log)" in result.stderr
    assert lines(tmp_path / "logs" / "n.3.log")[3] == "VALUE-3"
    result = run([str(RECIPE / "utils" / "run.pl"), "single.log", "echo", "one job"], tmp_path)
    assert result.returncode == 0 and lines(tmp_path / "single.log")[3] == "one job"
    result = run([str(RECIPE / "utils" / "run.pl"), "--progress-interval", "0.2", "JOB=1:2", "line.JOB.log",
                  "echo a JOB | tr a b; sleep 2"], tmp_path)
    assert result.returncode == 0 and lines(tmp_path / "line.2.log")[3] == "b 2"
    assert re.search(r"run.pl: 0/2 job\(s\) finished after \d s; line.1.log: b 1", result.stderr)  # the heartbeat
    # a trainer's line, as ESPnet logs it: on the console without its logging prefix, cut to 160 characters
    trainer_line = "[vm] 2026-12-08 03:43:21,573 (trainer:811) INFO: 1epoch:train:1-20batch: " + "loss=5.703, " * 40
    result = run([str(RECIPE / "utils" / "run.pl"), "--progress-interval", "0.2", "long.log",
                  f"echo '{trainer_line}'; sleep 2"], tmp_path)
    heartbeat = next(line for line in result.stderr.splitlines() if "finished after" in line)
    assert heartbeat.split("long.log: ")[1] == ("1epoch:train:1-20batch: " + "loss=5.703, " * 40)[:160] + " ..."
    result = run([str(RECIPE / "utils" / "run.pl"), "--bogus", "1", "x.log", "true"], tmp_path)
    assert result.returncode == 1 and "unknown option --bogus" in result.stderr


# ------------------------------------------------------------------------------------------------
# the Python steps of stages 2-4


def write_wav(path, seconds, rate=16000, channels=1, frequency=440.0):
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * frequency * t) * 32767).astype(np.int16)
    soundfile.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate, subtype="PCM_16")


@needs_sox
def test_format_audio_resamples_reads_pipes_and_reports_broken_audio(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0)
    write_wav(tmp_path / "b.wav", 0.5, rate=22050, channels=2)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (tmp_path / "wav.scp").write_text(
        f"a {tmp_path / 'a.wav'}\n"
        f"a_slow {sox_speed_command(str(tmp_path / 'a.wav'), '0.9')}\n"
        f"b {tmp_path / 'b.wav'}\n"
        f"broken {tmp_path / 'broken.wav'}\n"
        f"broken_pipe {sox_speed_command(str(tmp_path / 'broken.wav'), '1.1')}\n")
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        written, failed = format_wav_scp(tmp_path / "wav.scp", tmp_path / "out", tmp_path / "out.scp",
                                         tmp_path / "utt2num_samples", 16000, log=log)
    assert (written, failed) == (3, 2)
    errors = [line for line in lines(log_path) if line.startswith("ERROR")]
    assert errors[0].startswith(f"ERROR utterance broken: cannot read audio from '{tmp_path / 'broken.wav'}'")
    assert errors[1].startswith("ERROR utterance broken_pipe: command 'sox ") and "failed (exit 2)" in errors[1]
    num_samples = {k: int(v) for k, v in read_table(tmp_path / "utt2num_samples").entries.items()}
    assert num_samples["a"] == 16000 and num_samples["b"] == 8000
    assert abs(num_samples["a_slow"] - 16000 / 0.9) <= 2
    for utt, path in read_table(tmp_path / "out.scp").entries.items():
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", num_samples[utt])


def test_length_filter_reasons_and_limits(tmp_path):
    (tmp_path / "utt2num_samples").write_text("a 1599\nb 1600\nc 480000\nd 480001\ne 16000\n")
    (tmp_path / "text").write_text("a 好\nb 好\nc 好\nd 好\ne\n", encoding="utf-8")
    reasons = removal_reasons(tmp_path, 0.1, 30.0, 16000)
    assert reasons == {"too short": ["a"], "too long": ["d"], "empty transcript": ["e"]}  # the limits themselves pass


def test_speed_perturbation_entries():
    assert sox_speed_command("/x/a.wav", "0.9") == "sox /x/a.wav -t wav - speed 0.9 |"
    assert sox_speed_command("cat /x/a.wav |", "1.1") == "cat /x/a.wav | sox -t wav - -t wav - speed 1.1 |"


# ------------------------------------------------------------------------------------------------
# stages 2-5 through run.sh on a generated data directory with bad input

SENTENCES = {  # speaker -> marked transcripts in reading order
    "S0002": ["[张三]在(北京)工作", "今天天气很好", "<国家统计局>发布数据", "他们去了(广州)"],
    "S0003": ["(上海)的房价上涨", "[李四]说<万科>很好", "没有实体的句子", "[王五]和[赵六]"],
    "S0004": ["(深圳)的<腾讯>公司", "[马云]来到(杭州)"],
    "S0005": ["<中国人民银行>决定降息", "(天津)港口"],
}
SETS = {"train": ["S0002", "S0003"], "dev": ["S0004"], "test": ["S0005"]}


def make_corpus(recipe: Path) -> None:
    """data/{train,dev,test} as stage 1 writes them; train holds a broken file, a 0.05 s, a 3 s
    (over the test's 2 s limit) and a 22.05 kHz stereo utterance plus one with an empty transcript."""
    audio = recipe / "audio"
    audio.mkdir()
    for subset, speakers in SETS.items():
        data = recipe / "data" / subset
        data.mkdir(parents=True)
        rows = []
        for spk in speakers:
            for index, marked in enumerate(SENTENCES[spk]):
                rows.append((f"BAC009{spk}W{index + 1:04d}", spk, marked))
        if subset == "train":
            rows.append(("BAC009S0003W0005", "S0003", ""))
        wav, utt2spk, text, text_ner, entities = [], [], [], [], []
        for utt, spk, marked in rows:
            path = audio / f"{utt}.wav"
            if utt == "BAC009S0002W0002":
                path.write_bytes(b"RIFF broken")
            elif utt == "BAC009S0002W0003":
                write_wav(path, 0.05)
            elif utt in ("BAC009S0003W0001", "BAC009S0005W0001"):
                write_wav(path, 3.0)
            elif utt == "BAC009S0003W0002":
                write_wav(path, 1.0, rate=22050, channels=2)
            else:
                write_wav(path, 1.0, frequency=300 + 10 * len(wav))
            plain, found = parse_marked(marked)
            wav.append(f"{utt} {path}")
            utt2spk.append(f"{utt} {spk}")
            text.append(f"{utt} {plain}".rstrip())
            text_ner.append(f"{utt} {marked}".rstrip())
            entities.append(" ".join([utt] + [f"{e.type}:{e.text}" for e in found]))
        for name, content in [("wav.scp", wav), ("utt2spk", utt2spk), ("text", text), ("text_ner", text_ner),
                              ("entities", entities)]:
            (data / name).write_text("".join(f"{line}\n" for line in sorted(content)), encoding="utf-8")
        spk2utt = [f"{spk} " + " ".join(u for u, s, _ in rows if s == spk) for spk in speakers]
        (data / "spk2utt").write_text("".join(f"{line}\n" for line in spk2utt), encoding="utf-8")


@needs_sox
def test_stages_2_to_5_on_a_generated_corpus(tmp_path, monkeypatch):
    recipe = recipe_copy(tmp_path / "recipe")
    monkeypatch.chdir(recipe)  # wav.scp names audio relative to the recipe, as in ESPnet
    make_corpus(recipe)
    result = run(["./run.sh", "--stage", "2", "--stop-stage", "5", "--speed_perturb_factors", "0.9 1.0",
                  "--min_wav_duration", "0.1", "--max_wav_duration", "2", "--history_k", "2", "--nj", "2"], recipe)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    # stage 2: the perturbed copy joined the training set
    assert len(lines(recipe / "data" / "train_sp" / "wav.scp")) == 18
    assert read_table(recipe / "data" / "train_sp" / "utt2spk").entries["sp0.9-BAC009S0002W0001"] == "sp0.9-S0002"
    # stage 3: both copies of the broken file reported by id and removed, with counts
    assert "WARNING: 2 utterance(s) of train_sp could not be read and are left out:" in output
    assert re.search(r"ERROR utterance (sp0\.9-)?BAC009S0002W0002: ", output)
    assert "dump/raw/org/train_sp.tmp: removed 2 utterance(s) missing from wav.scp" in output  # renamed when done
    org = recipe / "dump" / "raw" / "org" / "train_sp"
    num_samples = {k: int(v) for k, v in read_table(org / "utt2num_samples").entries.items()}
    assert num_samples["BAC009S0003W0002"] == 16000  # 22.05 kHz stereo -> 16 kHz mono
    assert abs(num_samples["sp0.9-BAC009S0002W0001"] - 16000 / 0.9) <= 2
    info = soundfile.info(recipe / read_table(org / "wav.scp").entries["sp0.9-BAC009S0003W0002"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    # stage 4: removals by reason, test set kept whole
    train = recipe / "dump" / "raw" / "train_sp"
    assert "too short (< 0.1 s): 2 (BAC009S0002W0003 sp0.9-BAC009S0002W0003)" in output
    assert "too long (> 2.0 s): 2 (BAC009S0003W0001 sp0.9-BAC009S0003W0001)" in output
    assert "empty transcript: 2 (BAC009S0003W0005 sp0.9-BAC009S0003W0005)" in output
    assert "dump/raw/org/train_sp -> dump/raw/train_sp.tmp: kept 10 of 16 utterances, removed 6" in output
    assert "dump/raw/org/test: kept all 2 utterances (a test set); outside the limits: 1" in output
    assert len(lines(recipe / "dump" / "raw" / "test" / "wav.scp")) == 2
    history = read_table(train / "utt2history").entries
    assert history["BAC009S0002W0004"] == "BAC009S0002W0001"  # W0002 and W0003 were removed
    assert history["sp0.9-BAC009S0003W0004"] == "sp0.9-BAC009S0003W0002 sp0.9-BAC009S0003W0003"
    for subset in ("train_sp", "dev", "test"):
        assert validate_data_dir(recipe / "dump" / "raw" / subset) == [], subset
    summary = summarize_data_dir(train)
    assert (summary.utterances, summary.speakers) == (10, 4)
    assert summary.entities == {"PER": 8, "LOC": 4, "ORG": 2}  # 4, 2 and 1 in each copy
    assert re.search(r"dump/raw/train_sp +10 +4 +0\.00[0-9] +8 +4 +2", output)
    # stage 5: char token list with the entity marks of text_ner and ESPnet's specials
    tokens = lines(recipe / "data" / "token_list" / "char" / "tokens.txt")
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    expected = set("".join(read_table(train / "text_ner").entries.values()))
    assert set(tokens[2:-1]) == expected and {"[", "]", "(", ")", "<", ">"} <= expected
    assert f"{len(tokens)} tokens, 6 of them entity marks" in output


def test_stage_2_without_sox_names_tools_setup(tmp_path):
    recipe = recipe_copy(tmp_path / "recipe")
    bin_dir = tmp_path / "bin"  # a PATH with the basic tools but no sox
    bin_dir.mkdir()
    for tool in ("env", "bash", "date", "readlink", "dirname", "cat", "tr", "awk", "grep", "wc", "seq", "mkdir", "rm",
                 "flock", "head"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir)}
    for dset in ("train", "dev", "test"):  # the data stage 2 starts from, else run.sh stops at its option check
        (recipe / "data" / dset).mkdir(parents=True)
        (recipe / "data" / dset / "wav.scp").write_text("")
    result = run([str(shutil.which("bash")), "./run.sh", "--stage", "2", "--stop_stage", "2",
                  "--speed_perturb_factors", "0.9 1.0 1.1"], recipe, env=env)
    assert result.returncode == 1
    assert "sox not found; stage 2 needs it. Run tools/setup.sh" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# ./run.sh --stage 1 --stop_stage 5 on the bundled mini corpus


@needs_sox
def test_run_sh_stages_1_to_5_on_the_mini_corpus(tmp_path, monkeypatch):
    recipe = recipe_copy(tmp_path / "recipe")
    monkeypatch.chdir(recipe)
    assert (recipe / "local" / "data.sh").exists(), "local/data.sh (stage 1) is missing"
    result = run(["./run.sh", "--stage", "1", "--stop_stage", "5"], recipe)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for stage in range(1, 6):
        assert f"Stage {stage}:" in output
    assert "Stage 2: skipped (no --speed_perturb_factors)" in output
    for subset in ("train", "dev", "test"):
        assert f"validate_data_dir: dump/raw/{subset}: OK" in output
        data, dump = recipe / "data" / subset, recipe / "dump" / "raw" / subset
        assert validate_data_dir(dump) == []
        # the spoken sentences are all between 0.1 and 30 s: nothing removed
        assert lines(data / "text_ner") == lines(dump / "text_ner")
        summary = summarize_data_dir(dump)
        assert summary.hours > 0 and sum(summary.entities.values()) > 0
        assert re.search(rf"dump/raw/{subset} +{summary.utterances} +{summary.speakers} +{summary.hours:.3f} ", output)
    assert (recipe / "downloads").is_dir()
    tokens = lines(recipe / "data" / "token_list" / "char" / "tokens.txt")
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert {"[", "]", "(", ")", "<", ">"} <= set(tokens)
    assert "Successfully finished" in output
