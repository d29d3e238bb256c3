"""Bad options and interrupted runs of ./run.sh: a bad option is refused, naming it, before anything on disk
changes; a run.sh killed (SIGKILL of its whole process group) in stage 3, 6, 11 or 12 and run again ends with
the same outputs as a run that was never interrupted, byte for byte, and leaves nothing half-written meanwhile.

One recipe copy for the module, as small as the recipe runs: decoder_only/short on the 100 dev utterances of
the mini corpus (train, valid and test set alike), 2 epochs, greedy decoding. Its outputs are the reference
of the uninterrupted run; each kill test redoes one stage, killed, then again.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from espnet_llm.tasks.resumable_trainer import atomic_torch_save, restore_epoch_model
from test_recipe_full import processes_in, recipe_copy, run_sh

SMALL = ["--systems", "decoder_only", "--llm_phases", "short", "--train_set", "dev", "--valid_set", "dev",
         "--test_sets", "dev", "--train_args", "--max_epoch 2", "--inference_args", "--beam_size 1"]
RUN = Path("exp/decoder_only/short")
DECODED = RUN / "decode_speech_llm_beam_size1_valid.acc_current.ave" / "dev"  # asr.sh's <inference tag>/<set>
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="the mini corpus needs sox")


def digests(root: Path, *, skip=("logs", "logdir")) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks followed), by relative path, but for the jobs' logs."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not set(rel.parts) & set(skip):
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its inode, size and modification time: any write, removal or new file shows."""
    state = {}
    for path in root.rglob("*"):
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    recipe = recipe_copy(tmp_path_factory.mktemp("faults"))
    run_sh(recipe, "--stage", "1", "--stop_stage", "12", *SMALL, timeout=1200)
    return recipe


@pytest.fixture(scope="module")
def reference(recipe):
    """The uninterrupted run's outputs of stages 3, 6, 11 and 12."""
    return {"3": digests(recipe / "dump/raw/org/dev"), "6": digests(recipe / "dump/whisper_feats/dev"),
            "11": model_digests(recipe / RUN), "12": digests(recipe / DECODED)}


def model_digests(run_dir: Path) -> dict[str, str]:
    """The model files of a training run (checkpoint.pth also holds the wall-clock times of the reporter)."""
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
            for name in ["config.yaml", *sorted(p.name for p in run_dir.glob("*.pth") if p.name != "checkpoint.pth")]}


def run_and_kill(recipe: Path, args: list[str], ready, timeout: float = 600) -> None:
    """Start ./run.sh in a process group of its own and SIGKILL the whole group once ``ready()`` is true."""
    running = subprocess.Popen(["./run.sh", *args], cwd=recipe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert running.poll() is None, "run.sh ended before the moment of the kill"
            assert time.monotonic() < deadline, "the moment of the kill never came"
            time.sleep(0.01)
        assert running.poll() is None, "run.sh ended before the moment of the kill"
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
        running.wait(timeout=60)
    deadline = time.monotonic() + 30
    while processes_in(recipe.resolve()):  # the group's processes go with it
        assert time.monotonic() < deadline, "a job outlived the kill of run.sh's process group"
        time.sleep(0.2)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


# ------------------------------------------------------------------------------------------------
# bad options: refused before anything on disk changes

BAD_OPTIONS = [
    (["--nj", "0"], "Error: --nj '0': must be a whole number of at least 1"),
    (["--nj", "abc"], "Error: --nj 'abc': must be a whole number of at least 1"),
    (["--stage", "abc"], "Error: --stage 'abc': must be a whole number"),
    (["--stop_stage", "3b"], "Error: --stop_stage '3b': must be a whole number"),
    (["--stage", "14", "--stop_stage", "20"], "Error: --stage '14': is after the last stage"),
    (["--stage", "4", "--stop_stage", "3"], "Error: --stage '4': is after --stop_stage 3: nothing to run"),
    (["--inference_nj", "0"], "Error: --inference_nj '0': must be a whole number of at least 1"),
    (["--num_nodes", "-1"], "Error: --num_nodes '-1': must be a whole number of at least 1"),
    (["--ngpu", "one"], "Error: --ngpu 'one': must be empty"),
    (["--fs", "16k"], "Error: --fs '16k': must be a whole number of at least 1"),
    (["--history_k", "-1"], "Error: --history_k '-1': must be a whole number"),
    (["--history_sweep", "1 x"], "Error: --history_sweep '1 x': must be whole numbers of history utterances"),
    (["--history_sweep", "1", "--llm_phases", "short"],
     "Error: --history_sweep runs the phases with a history (long cot), and --llm_phases 'short' names neither"),
    (["--history_sweep", "0 4", "--llm_phases", "short long cot"],
     "Error: --history_k 3: the runs read up to 4 history utterances (decoder_only/long_k4, decoder_only/cot_k4"),
    (["--use_feature_cache", "yes"], "option --use_feature_cache takes true or false, got 'yes'"),
    (["--min_wav_duration", "40"], "Error: --min_wav_duration '40': must be below --max_wav_duration 30"),
    (["--max_wav_duration", "thirty"], "Error: --max_wav_duration 'thirty': must be a number of seconds"),
    (["--speed_perturb_factors", "0.9,1.1"], "Error: --speed_perturb_factors '0.9,1.1': must be positive numbers"),
    (["--conformer_ctc_weights", "0.3 2"], "Error: --conformer_ctc_weights '0.3 2': must be CTC weights from 0 to 1"),
    (["--systems", "decoder_onyl"], "Error: --systems 'decoder_onyl': names decoder_onyl, which has no config "
                                    "conf/tiny/train_decoder_onyl_<phase>.yaml (systems: conformer decoder_only_pretrained decoder_only "),
    (["--systems", ""], "Error: --systems '': must name at least one system"),
    (["--llm_phases", "shrot"], "Error: --llm_phases 'shrot': must be phases among: short long cot"),
    (["--llm_phases", ""], "Error: --llm_phases '': must name a phase for the speech LLM decoder_only"),
    (["--model_size", "huge"], "Error: --model_size 'huge': must be tiny or full"),
    (["--test_sets", ""], "Error: --test_sets '': must not be empty"),
    (["--test_sets", "dev tset", "--stage", "12", "--stop_stage", "12"],
     "Error: dump/raw/tset/wav.scp not found (a set of --train_set, --valid_set or --test_sets)"),
    (["--train_set", "a/b"], "Error: --train_set 'a/b': must be data set names"),
    (["--dumpdir", "my dump"], "Error: --dumpdir 'my dump': must not contain spaces"),
    (["--train_config", "missing.yaml"], "Error: --train_config 'missing.yaml': is not a file"),
    (["--inference_config", "missing.yaml"], "Error: --inference_config 'missing.yaml': is not a file"),
    (["--stage", "1", "--aishell_root", "/nonexistent"], "Error: --aishell_root '/nonexistent': is not a directory"),
    (["--stage", "1", "--ner_transcripts", "/nonexistent.txt"],
     "Error: --ner_transcripts '/nonexistent.txt': names /nonexistent.txt, which is not a file"),
    (["--stgae", "3"], "unknown option --stgae (no such variable"),
    (["--PATH", "/x"], "unknown option --PATH (not an option of ./run.sh"),
    (["--SECONDS", "0"], "unknown option --SECONDS (not an option of ./run.sh"),
    (["--home", "/x"], "unknown option --home (not an option of ./run.sh"),  # exported below
    (["stage3"], "unexpected argument(s): stage3"),
]


@needs_sox
@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_refused_before_anything_changes(recipe, args, message):
    """Each on top of a run of stages 3-4 (which start by replacing dump/raw/org/<set> and dump/raw/<set>)."""
    before = tree_state(recipe)
    env = {**os.environ, "home": "/elsewhere"}  # an environment variable of the recipe's case is no option either
    done = subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "4", *SMALL, *args], cwd=recipe,
                          capture_output=True, text=True, env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and message in output and "Successfully finished" not in output, output[-3000:]
    assert tree_state(recipe) == before


# ------------------------------------------------------------------------------------------------
# kill and rerun

@needs_sox
def test_stage_3_killed_keeps_the_earlier_output_and_a_rerun_writes_the_same(recipe, reference):
    org = recipe / "dump/raw/org"
    started = time.time_ns()

    def writing_audio():
        return any(p.stat().st_mtime_ns > started for p in org.rglob("*.wav"))

    run_and_kill(recipe, ["--stage", "3", "--stop_stage", "3", *SMALL], writing_audio)
    # stage 4's data directory names the audio of stage 3: it must still be there, and as it was
    for line in (recipe / "dump/raw/dev/wav.scp").read_text().splitlines():
        assert (recipe / line.split()[1]).is_file(), line
    assert digests(org / "dev") == reference["3"]
    run_sh(recipe, "--stage", "3", "--stop_stage", "3", *SMALL)
    assert digests(org / "dev") == reference["3"] and not leftovers(org)


@needs_sox
def test_stage_6_killed_resumes_and_writes_the_same_features(recipe, reference):
    feats = recipe / "dump/whisper_feats/dev"
    shutil.rmtree(feats)
    run_and_kill(recipe, ["--stage", "6", "--stop_stage", "6", *SMALL],
                 lambda: (feats / "parts/1/data/feats.0.scp").exists())  # part 1 committed, the merge not done
    assert not (feats / "feats.scp").exists() or digests(feats)["feats.scp"] == reference["6"]["feats.scp"]
    output = run_sh(recipe, "--stage", "6", "--stop_stage", "6", *SMALL)
    assert digests(feats) == reference["6"] and not leftovers(feats)
    assert "1 chunk(s) (50 utterances) already dumped" in (feats / "logs/dump.1.log").read_text(), output


@needs_sox
def test_stage_11_killed_resumes_to_the_same_model(recipe, reference):
    run_dir = recipe / RUN
    shutil.rmtree(run_dir)
    run_and_kill(recipe, ["--stage", "11", "--stop_stage", "11", *SMALL],
                 lambda: (run_dir / "train.log").exists() and "2/2epoch started" in (run_dir / "train.log").read_text())
    run_sh(recipe, "--stage", "11", "--stop_stage", "11", *SMALL)
    log = (run_dir / "train.log").read_text()
    assert f"The training was resumed using {RUN}/checkpoint.pth" in log and "1/2epoch started" not in log
    assert model_digests(run_dir) == reference["11"] and not leftovers(run_dir)


@needs_sox
def test_stage_12_killed_decodes_the_same_again(recipe, reference):
    decode_dir = recipe / DECODED
    run_and_kill(recipe, ["--stage", "12", "--stop_stage", "12", *SMALL],
                 lambda: (decode_dir / "logdir/inference.1.log").exists())
    assert not (decode_dir / "text").exists() or digests(decode_dir)["text"] == reference["12"]["text"]
    run_sh(recipe, "--stage", "12", "--stop_stage", "12", *SMALL)
    assert digests(decode_dir) == reference["12"] and not leftovers(decode_dir)


@needs_sox
def test_one_run_sh_at_a_time_in_a_recipe_directory(recipe):
    lock, decoding = recipe / ".run.sh.lock", ["--stage", "12", "--stop_stage", "12", *SMALL]
    seen = []

    def second_run_while_the_first_holds_the_lock():
        line = lock.read_text().strip() if lock.exists() else ""
        if line.startswith("PID "):
            seen.append((line, subprocess.run(["./run.sh", *decoding], cwd=recipe, capture_output=True, text=True,
                                              timeout=300)))
        return bool(seen)

    run_and_kill(recipe, decoding, second_run_while_the_first_holds_the_lock)
    line, second = seen[0]
    assert second.returncode == 1 and f"Error: another run.sh is running in {recipe}: {line}. Wait" in second.stdout
    # the killed run's line stays: the next run says whose it was, takes the lock over, and frees it at its end
    after = run_sh(recipe, *decoding)
    assert f"The lock of a run.sh that ended without releasing it is taken over: {line}" in after
    assert lock.read_text() == ""


# ------------------------------------------------------------------------------------------------
# a kill in the middle of a checkpoint save (too short a moment to hit from outside: the kill is the save's own)

KILLED_SAVE = """
import os, signal, sys, torch
from espnet_llm.tasks.resumable_trainer import atomic_torch_save

class KillWhileSaving:  # pickled after the file is opened: SIGKILL in the middle of torch.save
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

with atomic_torch_save():
    torch.save({"model": torch.full((1000,), 2.0), "then": KillWhileSaving()}, sys.argv[1])
"""


def test_a_checkpoint_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": torch.ones(1000)}, checkpoint)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(checkpoint)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.equal(torch.load(checkpoint)["model"], torch.ones(1000))  # the old one, whole


def test_a_kill_between_checkpoint_and_epoch_model_is_repaired_on_resume(tmp_path):
    """ESPnet writes checkpoint.pth (epoch 2 done), then 2epoch.pth: killed between the two, the resumed run
    writes 2epoch.pth from the checkpoint, so that the n-best averaging finds it."""
    weights = {"w": torch.arange(6.0)}
    with atomic_torch_save():
        torch.save({"model": weights, "reporter": {"epoch": 2}}, tmp_path / "checkpoint.pth")
    restore_epoch_model(tmp_path)
    assert torch.equal(torch.load(tmp_path / "2epoch.pth")["w"], weights["w"])
    (tmp_path / "checkpoint.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'checkpoint.pth'} cannot be read"):
        restore_epoch_model(tmp_path)
