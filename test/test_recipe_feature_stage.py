"""run.sh stage 6, the Whisper feature dump of the speech LLMs, on a generated data directory with the tiny
Whisper: every set dumped, an undumpable utterance counted and named by file, a rerun resumed, a dump of
other input redone, the switch (--use_feature_cache) and the LLM configs' agreement on the Whisper.

The recipe runs in a temporary directory of symlinks to egs2/aishell_ner/llm1, as in test_recipe_data_stages.
"""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import yaml

from espnet_llm.data_prep.kaldi_dir import read_table

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1"
BROKEN = "BAC009S0002W0003"
ONE_SET = ["--train_set", "train", "--valid_set", "train", "--test_sets", "train"]  # one dump: fast


def recipe_copy(root: Path, tiny_models: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh", "local", "utils"):
        (root / name).symlink_to(RECIPE / name)
    # conf/tiny: the decoder-only configs (the lead's current ones), the long phase's to be edited
    (root / "conf" / "tiny").mkdir(parents=True)
    for phase in ("short", "long"):
        name = f"train_decoder_only_{phase}.yaml"
        (root / "conf" / "tiny" / name).write_text((RECIPE / "conf" / "tiny" / name).read_text())
    whisper = yaml.safe_load((root / "conf/tiny/train_decoder_only_short.yaml").read_text())["speech_encoder_conf"]
    (root / whisper["model_path"]).parent.mkdir(parents=True)
    (root / whisper["model_path"]).symlink_to(tiny_models / "whisper")
    return root


def make_set(recipe: Path) -> list[str]:
    """dump/raw/train as stage 4 writes it: five 16-kHz utterances, one of them an unreadable file, and their history."""
    data = recipe / "dump" / "raw" / "train"
    (data / "audio").mkdir(parents=True)
    wav, lengths, uids = [], [], []
    for index in range(5):
        uid = f"BAC009S0002W{index + 1:04d}"
        path = data / "audio" / f"{uid}.wav"
        samples = 8000 + 1600 * index
        if uid == BROKEN:
            path.write_bytes(b"RIFF broken")
        else:
            t = np.arange(samples) / 16000
            soundfile.write(path, 0.3 * np.sin(2 * np.pi * (200 + 50 * index) * t), 16000, subtype="PCM_16")
        wav.append(f"{uid} {path}\n")
        lengths.append(f"{uid} {samples}\n")
        uids.append(uid)
    (data / "wav.scp").write_text("".join(wav))
    (data / "utt2num_samples").write_text("".join(lengths))
    # each utterance's previous ones (K = 3), as the data stages write them: run.sh checks it holds the runs' history
    (data / "utt2history").write_text("".join(f"{u} {' '.join(uids[max(0, i - 3):i])}".rstrip() + "\n"
                                              for i, u in enumerate(uids)))
    return uids


def run_sh(recipe: Path, *args: str, ok: bool = True) -> str:
    done = subprocess.run(["./run.sh", *args], cwd=recipe, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == ok, output[-3000:]
    return output


def test_stage_6_dumps_resumes_and_reports(tiny_models, tmp_path):
    recipe = recipe_copy(tmp_path / "recipe", tiny_models)
    uids = make_set(recipe)
    stage_6 = ["--stage", "6", "--stop_stage", "6", "--systems", "decoder_only", "--llm_phases", "short long",
               "--nj", "1", *ONE_SET]
    out = recipe / "dump" / "whisper_feats" / "train"

    output = run_sh(recipe, *stage_6)
    assert "Stage 6: Whisper feature dump: dump/raw/train -> dump/whisper_feats/train" in output
    dumped = read_table(out / "feats.scp").entries
    assert sorted(dumped) == [u for u in uids if u != BROKEN]
    assert list(read_table(out / "failed").entries) == [BROKEN]
    width = json.loads((tiny_models / "whisper" / "config.json").read_text())["d_model"]
    shapes = read_table(out / "feats_shape").entries
    assert all(shape.endswith(f",{width}") for shape in shapes.values())
    assert f"1 utterance(s) of train have no Whisper features ({out.relative_to(recipe)}/failed)" in output
    per_hour = float(re.search(r"([0-9.]+) MB per hour", output).group(1))
    fp16 = 50 * width * 2 * 3600 / 1e6  # 50 frames/s x D x 2 bytes: 23.04 MB/h for D = 64
    assert fp16 < per_hour < 1.1 * fp16  # plus the ark headers

    # a rerun resumes: nothing left to dump, the same features
    run_sh(recipe, *stage_6)
    assert "1 chunk(s) (5 utterances) already dumped, 0 to do" in (out / "logs" / "dump.1.log").read_text()
    assert read_table(out / "feats.scp").entries == dumped

    # other audio: the old dump is removed and made again
    wav_scp = recipe / "dump" / "raw" / "train" / "wav.scp"
    wav_scp.write_text("".join(line for line in wav_scp.read_text().splitlines(True) if BROKEN not in line))
    output = run_sh(recipe, *stage_6)
    assert "was dumped from other audio, model or --nj: removed, dumping again" in output
    assert sorted(read_table(out / "feats.scp").entries) == sorted(dumped) and not (out / "failed").read_text()

    # off, or no speech LLM: skipped
    assert "Stage 6: skipped (--use_feature_cache false" in run_sh(recipe, *stage_6, "--use_feature_cache", "false")
    assert "Stage 6: skipped (no speech LLM" in run_sh(recipe, *stage_6, "--systems", "conformer")


def test_llm_configs_must_agree_on_the_whisper(tiny_models, tmp_path):
    recipe = recipe_copy(tmp_path / "recipe", tiny_models)
    long = recipe / "conf" / "tiny" / "train_decoder_only_long.yaml"
    config = yaml.safe_load(long.read_text())
    config["speech_encoder_conf"]["pad_to_30s"] = not config["speech_encoder_conf"].get("pad_to_30s", False)
    long.write_text(yaml.safe_dump(config))
    make_set(recipe)  # stage 6's input: without it run.sh stops at its option check, before the configs are read
    output = run_sh(recipe, "--stage", "6", "--stop_stage", "11", "--systems", "decoder_only",
                    "--llm_phases", "short long", *ONE_SET, ok=False)
    assert "dumps one Whisper's features for every speech LLM" in output
    assert "conf/tiny/train_decoder_only_long.yaml" in output
