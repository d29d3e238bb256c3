"""Speech LLM training and decoding end to end: overfitting four spoken utterances, ESPnet's CLI with
collect-stats, training, resuming and decoding past a corrupt file, and 2-process DDP (gloo) on the CPU."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
import yaml
from espnet2.train.collate_fn import CommonCollateFn

from espnet_llm.bin.pack import BaseModelMismatch, main as pack_main
from espnet_llm.bin.speech_llm_inference import Speech2Text, inference
from espnet_llm.bin.transcribe import main as transcribe_main
from espnet_llm.mini.mandarin_tts import MandarinSpeaker, Voice
from espnet_llm.mini.corpus import resample
from espnet_llm.scoring.alignment import count_errors
from espnet_llm.tasks.speech_llm import SpeechLLMTask
from espnet_llm.text.aishell_ner import strip_marks

RECIPE_CONF = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1" / "conf" / "tiny"
SENTENCES = {  # one speaker's utterances, entity-marked as in AISHELL-NER
    "S0001W0001": "[张三]在(北京)工作",
    "S0001W0002": "<中国银行>发布公告",
    "S0001W0003": "今天天气很好",
    "S0001W0004": "(上海)的房价上涨",
}

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox resamples the speech")


def speak_corpus(root: Path, corrupt: str | None = None) -> Path:
    """A data directory of SENTENCES spoken by libespeak-ng 1.52 (cmn) at 16 kHz; `corrupt` adds a broken file."""
    tts = MandarinSpeaker()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    ids = sorted(SENTENCES)
    tables = {n: [] for n in ("wav.scp", "text", "text_ner", "utt2history", "utt2spk")}
    for i, uid in enumerate(ids):
        wav = root / "wav" / f"{uid}.wav"
        resample(tts.speak(strip_marks(SENTENCES[uid]), Voice("cmn", 50, 175)), tts.sample_rate, wav)
        tables["wav.scp"].append(f"{uid} {wav}")
        tables["text"].append(f"{uid} {strip_marks(SENTENCES[uid])}")
        tables["text_ner"].append(f"{uid} {SENTENCES[uid]}")
        tables["utt2history"].append(" ".join([uid] + ids[max(0, i - 2):i]))
        tables["utt2spk"].append(f"{uid} S0001")
    if corrupt:
        (root / "wav" / f"{corrupt}.wav").write_bytes(b"RIFF\x00\x00 this is no audio")
        for name, value in (("wav.scp", root / "wav" / f"{corrupt}.wav"), ("text", "坏"), ("text_ner", "坏"),
                            ("utt2history", ""), ("utt2spk", "S0001")):
            tables[name].append(f"{corrupt} {value}".rstrip())
    for name, lines in tables.items():
        (root / name).write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    return root


def data_entries(data: Path, ner: bool = True):
    entries = [(f"{data}/wav.scp", "speech", "sound"), (f"{data}/text", "text", "text")]
    if ner:
        entries += [(f"{data}/text_ner", "text_ner", "text"), (f"{data}/utt2history", "history", "text")]
    return entries


def tiny_config(tiny_models: Path, name: str) -> dict:
    config = yaml.safe_load((RECIPE_CONF / f"train_{name}.yaml").read_text())
    config["speech_encoder_conf"]["model_path"] = str(tiny_models / "whisper")
    config["llm_conf"]["model_path"] = str(tiny_models / "chatglm3")
    return config


@needs_sox
def test_overfit_four_utterances_then_greedy_decoding_gives_their_transcripts(tiny_models, tmp_path):
    data = speak_corpus(tmp_path / "data")
    config = tiny_config(tiny_models, "decoder_only_short")
    args = SpeechLLMTask.get_parser().parse_args(["--output_dir", str(tmp_path / "exp")])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(args)
    loader = SpeechLLMTask.build_streaming_iterator(
        data_entries(data, ner=False), SpeechLLMTask.preprocessor_for(args, data_entries(data, ner=False)),
        CommonCollateFn(int_pad_value=-1), batch_size=4, num_workers=0,
    )
    keys, batch = next(iter(loader))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for step in range(600):
        loss, stats, _ = model(**batch, utt_id=keys)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        # a mean token loss under ln(2) / n_tokens puts every gold token above probability 1/2, so
        # greedy decoding has a margin that numerics of another CPU cannot flip (accuracy 1.0 has none)
        if float(stats["loss"]) * (int(batch["text_lengths"].sum()) + len(keys)) < 0.69:  # + one <eos> each
            break
    # decode through the inference entry point, from a trainable-only checkpoint
    exp = tmp_path / "exp"
    exp.mkdir()
    torch.save(model.state_dict(), exp / "model.pth")
    (exp / "config.yaml").write_text(yaml.safe_dump(vars(args), allow_unicode=True))
    counts = inference(
        output_dir=str(tmp_path / "decode"), data_path_and_name_and_type=data_entries(data, ner=False)[:1],
        speech_llm_train_config=str(exp / "config.yaml"), speech_llm_model_file=str(exp / "model.pth"),
        batch_size=3, num_workers=0,
    )
    hyps = dict(line.split(maxsplit=1) for line in (tmp_path / "decode/1best_recog/text").read_text().splitlines())
    assert hyps == {uid: strip_marks(t) for uid, t in SENTENCES.items()}, f"after {step + 1} steps: {hyps}"
    assert counts == {"utterances": 4, "broken": 0, "broken_ids": [], "with_problems": 0, "problems": {}}
    assert json.loads((tmp_path / "decode/parse_repairs.json").read_text()) == counts
    assert (tmp_path / "decode/1best_recog/score").exists() and (tmp_path / "decode/1best_recog/token").exists()
    # the library face: audio in, its transcript out, whatever its rate, channels and sample type
    speech2text = Speech2Text(str(exp / "config.yaml"), str(exp / "model.pth"), beam_size=2, nbest=2)
    for uid, text in SENTENCES.items():
        wav, rate = soundfile.read(data / "wav" / f"{uid}.wav", dtype="float32")
        at_44k = torchaudio.functional.resample(torch.from_numpy(wav), rate, 44100).numpy()
        stereo_int16 = np.round(np.stack([at_44k, 0.5 * at_44k], axis=1) * 32767).astype(np.int16)
        for speech, fs in ((data / "wav" / f"{uid}.wav", None), (wav, rate), (stereo_int16, 44100)):
            best, second = speech2text(speech, fs=fs)
            assert best.text == strip_marks(text) and best.problems == [] and best.score > -1.0, (uid, fs)
            # scores: the answer's log-probability, its tokens and end token
            assert best.score_per_token == pytest.approx(best.score / (len(best.token_ids) + 1))
            assert second.token_ids != best.token_ids and second.score < best.score
    with pytest.raises(ValueError, match="the speech: empty audio"):
        speech2text(np.zeros(0, dtype=np.float32), fs=16000)
    with pytest.raises(ValueError, match="does not say its sample rate"):
        speech2text(wav)
    with pytest.raises(ValueError, match="takes no history"):
        speech2text(np.zeros(16000, dtype=np.float32), history=[np.zeros(16000, dtype=np.float32)], fs=16000)
    # the decoding CLI reads any rate and channels too: the same transcripts from 44.1-kHz stereo files
    (tmp_path / "wav44k").mkdir()
    with open(tmp_path / "wav44k.scp", "w") as scp:
        for uid in SENTENCES:
            wav, rate = soundfile.read(data / "wav" / f"{uid}.wav", dtype="float32")
            at_44k = torchaudio.functional.resample(torch.from_numpy(wav), rate, 44100).numpy()
            soundfile.write(tmp_path / "wav44k" / f"{uid}.flac", np.stack([at_44k, at_44k], axis=1), 44100)
            scp.write(f"{uid} {tmp_path / 'wav44k' / f'{uid}.flac'}\n")
    inference(
        output_dir=str(tmp_path / "decode44k"), data_path_and_name_and_type=[(str(tmp_path / "wav44k.scp"), "speech", "sound")],
        speech_llm_train_config=str(exp / "config.yaml"), speech_llm_model_file=str(exp / "model.pth"), num_workers=0,
    )
    assert (tmp_path / "decode44k/1best_recog/text").read_text() == (tmp_path / "decode/1best_recog/text").read_text()
    # a model that travels: packed, moved, and loaded from anywhere over copies of its base models
    pack_main(["--exp_dir", str(exp), "--model_file", "model.pth", "--outpath", str(tmp_path / "packed/model.zip"),
               "--decode_config", str(RECIPE_CONF / "decode_speech_llm.yaml")])
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "packed", elsewhere)
    shutil.rmtree(tmp_path / "packed")
    for name in ("whisper", "chatglm3"):
        shutil.copytree(tiny_models / name, elsewhere / "base" / name)
    base_models = {"llm": elsewhere / "base" / "chatglm3", "speech_encoder": elsewhere / "base" / "whisper"}
    travelled = Speech2Text.from_pretrained(elsewhere / "model.zip", base_models=base_models)
    assert travelled.beam_size == 4  # from the packed decode config
    for uid, text in SENTENCES.items():
        assert travelled(data / "wav" / f"{uid}.wav")[0].text == strip_marks(text)
    # the transcriber: a recording of the four sentences with pauses, at 44.1 kHz, split at its pauses by the VAD
    recording = [np.zeros(8000, dtype=np.float32)]
    for uid in SENTENCES:
        recording += [soundfile.read(data / "wav" / f"{uid}.wav", dtype="float32")[0], np.zeros(8000, dtype=np.float32)]
    soundfile.write(tmp_path / "recording.flac", torchaudio.functional.resample(
        torch.from_numpy(np.concatenate(recording)), 16000, 44100).numpy(), 44100)
    (tmp_path / "not_audio.wav").write_bytes(b"RIFF no audio")
    transcribe_main(["--model", str(elsewhere / "model.zip"), "--base_model", f"llm={base_models['llm']}", "--base_model",
                     f"speech_encoder={base_models['speech_encoder']}", "--output", str(tmp_path / "out.jsonl"),
                     "--beam_size", "2", "--nbest", "2", str(tmp_path / "recording.flac"), str(tmp_path / "not_audio.wav"),
                     "--speech_pad_ms", "150"])  # a model that memorised four files needs their own silences
    heard, unreadable = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # each segment covers its sentence (0.5 s of silence between them) and is nearest its transcript
    starts = np.cumsum([0.5] + [len(r) / 16000 for r in recording[1:-1]])[::2]
    sentences = [strip_marks(t) for t in SENTENCES.values()]
    assert len(heard["segments"]) == len(sentences)
    for segment, start, sentence, wav in zip(heard["segments"], starts, sentences, recording[1::2]):
        end = start + len(wav) / 16000
        assert start - 0.25 < segment["start"] <= start and end <= segment["end"] < end + 0.25
        distances = [sum(count_errors(list(other), list(segment["text"]))[1:]) for other in sentences]
        assert distances.index(min(distances)) == sentences.index(sentence) and min(distances) <= 1, segment
    assert heard["text"] == "".join(s["text"] for s in heard["segments"]) and len(heard["segments"][0]["nbest"]) == 2
    assert unreadable["input"].endswith("not_audio.wav") and "cannot read audio" in unreadable["error"]
    with pytest.raises(SystemExit, match="none of the 1 recording"):
        transcribe_main(["--model", str(elsewhere / "model.zip"), "--base_model", f"llm={base_models['llm']}", "--base_model",
                         f"speech_encoder={base_models['speech_encoder']}", str(tmp_path / "not_audio.wav")])
    # a base model that is not the one the pack was trained on is refused
    config = elsewhere / "base" / "chatglm3" / "config.json"
    config.write_text(config.read_text().replace("}", ' , "touched": 1}', 1))
    with pytest.raises(BaseModelMismatch, match="base model llm .*config.json has 1.* bytes, the packed model's"):
        Speech2Text.from_pretrained(elsewhere / "model.zip", base_models=base_models)


def run_module(module: str, *argv: str, cwd: Path, launcher: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = [*launcher] if launcher else [sys.executable, "-m"]
    done = subprocess.run([*cmd, module, *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def write_config(tiny_models: Path, name: str, path: Path, **overrides) -> Path:
    config = {**tiny_config(tiny_models, name), **overrides}
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@needs_sox
def test_espnet_cli_collect_stats_train_resume_and_decode_past_a_corrupt_file(tiny_models, tmp_path):
    data = speak_corpus(tmp_path / "data", corrupt="S0001W0005")
    config = write_config(tiny_models, "decoder_only_cot", tmp_path / "train.yaml", max_epoch=2)
    data_args = []
    for phase in ("train", "valid"):
        for path, name, kind in data_entries(data):
            data_args += [f"--{phase}_data_path_and_name_and_type", f"{path},{name},{kind}"]
    module = "espnet_llm.bin.speech_llm_train"
    run_module(module, "--collect_stats", "true", "--config", str(config), *data_args, "--output_dir", "stats",
               "--train_shape_file", f"{data}/wav.scp", "--valid_shape_file", f"{data}/wav.scp", cwd=tmp_path)
    assert "S0001W0005 0" in (tmp_path / "stats/train/speech_shape").read_text()
    shapes = [a for p in ("train", "valid") for k in ("speech", "text")
              for a in (f"--{p}_shape_file", f"stats/{p}/{k}_shape")]
    train = run_module(module, "--config", str(config), *data_args, *shapes, "--output_dir", "exp", cwd=tmp_path)
    assert "S0001W0005" in train.stderr and "skipping 1 broken" in train.stderr  # reported, training went on
    epoch1 = torch.load(tmp_path / "exp/1epoch.pth")
    trained = ("lora_", "adapter.", "trainable_tokens", "part_embedding.", "segment_embedding.")
    assert epoch1 and all(any(part in k for part in trained) for k in epoch1)
    resumed = run_module(module, "--config", str(config), *data_args, *shapes, "--output_dir", "exp",
                         "--resume", "true", "--max_epoch", "3", cwd=tmp_path)
    assert "resumed" in resumed.stderr and (tmp_path / "exp/3epoch.pth").exists()
    # validation measures the speech reliance (a second pass) at the last epoch of a run only
    results = {int(m[0]): m[1] for m in re.findall(r"(\d+)epoch results: (.*)", train.stderr + resumed.stderr)}
    assert sorted(results) == [1, 2, 3]
    assert "speech_reliance" not in results[1] and "speech_reliance=" in results[2] and "speech_reliance=" in results[3]
    run_module("espnet_llm.bin.speech_llm_inference", "--output_dir", "decode", "--batch_size", "2",
               "--speech_llm_train_config", "exp/config.yaml", "--speech_llm_model_file", "exp/valid.acc_current.ave.pth",
               "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
               "--data_path_and_name_and_type", f"{data}/utt2history,history,text",
               "--max_new_tokens", "8", "--num_workers", "0", cwd=tmp_path)
    for name in ("text", "token", "score", "text_ner"):
        lines = (tmp_path / "decode/1best_recog" / name).read_text().splitlines()
        assert [line.split()[0] for line in lines] == sorted([*SENTENCES, "S0001W0005"])


@needs_sox
def test_two_process_ddp_with_gloo_on_cpu_trains_a_step(tiny_models, tmp_path):
    data = speak_corpus(tmp_path / "data")
    config = write_config(tiny_models, "encoder_decoder_short", tmp_path / "train.yaml", max_epoch=1,
                          batch_type="unsorted", batch_size=4)
    data_args = []
    for phase in ("train", "valid"):
        for path, name, kind in data_entries(data, ner=False):
            data_args += [f"--{phase}_data_path_and_name_and_type", f"{path},{name},{kind}"]
    shapes = ["--train_shape_file", f"{data}/wav.scp", "--valid_shape_file", f"{data}/wav.scp"]
    with socket.socket() as s:  # torchrun's --master_port 0 is not passed on as a usable MASTER_PORT
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env_launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, "-m"]
    done = run_module("espnet_llm.bin.speech_llm_train", "--config", str(config), *data_args, *shapes,
                      "--output_dir", "exp", "--ngpu", "0", "--dist_backend", "gloo", cwd=tmp_path,
                      launcher=env_launcher)
    assert (tmp_path / "exp/1epoch.pth").exists(), done.stderr[-2000:]
    assert "1epoch results" in done.stderr and ":0/2]" in done.stderr  # rank 0 of a world of 2 logged it


@needs_sox
def test_a_phase_trained_outside_the_recipe_gets_a_cycle_of_its_own_steps(tiny_models, tmp_path):
    """The full-size configs leave first_cycle_steps null for run.sh to count over a chain of phases; trained on
    its own, a phase's cycle is its own steps, and a warmup as long as the cycle is refused by name."""
    data = speak_corpus(tmp_path / "data")
    schedule = {"first_cycle_steps": None, "warmup_steps": 1, "max_lr": 1e-4, "min_lr": 1e-5}
    config = write_config(tiny_models, "decoder_only_short", tmp_path / "train.yaml", max_epoch=2,
                          batch_type="unsorted", batch_size=2, scheduler="cosineannealingwarmuprestarts",
                          scheduler_conf=schedule)
    data_args = []
    for phase in ("train", "valid"):
        for path, name, kind in data_entries(data, ner=False):
            data_args += [f"--{phase}_data_path_and_name_and_type", f"{path},{name},{kind}"]
    shapes = ["--train_shape_file", f"{data}/wav.scp", "--valid_shape_file", f"{data}/wav.scp"]
    module = "espnet_llm.bin.speech_llm_train"
    run_module(module, "--config", str(config), *data_args, *shapes, "--output_dir", "exp", cwd=tmp_path)
    written = yaml.safe_load((tmp_path / "exp/config.yaml").read_text())
    assert written["scheduler_conf"]["first_cycle_steps"] == 4  # 2 epochs of 2 batches of 2 utterances
    done = subprocess.run([sys.executable, "-m", module, "--config", str(config), *data_args, *shapes,
                           "--output_dir", "exp2", "--scheduler_conf", "warmup_steps=4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "warmup_steps 4 is not below first_cycle_steps 4" in done.stderr


@needs_sox
def test_bf16_frozen_weights_train_on_the_cpu_with_use_amp(tiny_models, tmp_path):
    """The full-size configs' dtypes (bf16 Whisper and LLM, float32 adapter and LoRA) and use_amp, trained with
    --ngpu 0: the CPU gets the bf16 autocast that ESPnet gives a GPU."""
    data = speak_corpus(tmp_path / "data")
    config = tiny_config(tiny_models, "decoder_only_short")
    config["speech_encoder_conf"]["dtype"] = config["llm_conf"]["dtype"] = "bfloat16"
    config = write_config(tiny_models, "decoder_only_short", tmp_path / "train.yaml", max_epoch=1, use_amp=True,
                          batch_type="unsorted", batch_size=2, speech_encoder_conf=config["speech_encoder_conf"],
                          llm_conf=config["llm_conf"])
    data_args = []
    for phase in ("train", "valid"):
        for path, name, kind in data_entries(data, ner=False):
            data_args += [f"--{phase}_data_path_and_name_and_type", f"{path},{name},{kind}"]
    shapes = ["--train_shape_file", f"{data}/wav.scp", "--valid_shape_file", f"{data}/wav.scp"]
    done = run_module("espnet_llm.bin.speech_llm_train", "--config", str(config), *data_args, *shapes,
                      "--output_dir", "exp", "--ngpu", "0", cwd=tmp_path)
    assert re.search(r"1epoch results: \[train\] .*loss=\d", done.stderr) and (tmp_path / "exp/1epoch.pth").exists()
