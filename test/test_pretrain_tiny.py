"""Pretraining the tiny ChatGLM3 on text (espnet_llm.mini.pretrain_tiny_chatglm3), and stage 5 redoing it only when due."""
import json
import math
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml

from espnet_llm.bin.prepare_speech_llm_models import prepare_models
from espnet_llm.llm.chatglm3 import checkpoint_shards, load_chatglm3
from espnet_llm.mini.pretrain_tiny_chatglm3 import (
    STAMP, PretrainConfig, evaluate, pretrain, read_config, read_sentences, sha256_of, split_held_out,
)

RECIPE_CONF = Path(__file__).parents[1] / "egs2" / "aishell_ner" / "llm1" / "conf" / "tiny"
# A text the tiny model can learn in a few dozen steps: five sentences, each many times (the held-out lines
# are repeats of training lines, so a model that learnt them must beat the unigram by far).
SENTENCES = ["广州市房地产中介协会还表示", "相比于其他一线城市", "广州二手住宅市场表现一直相对稳健",
             "北京今天的天气很好", "上海的房价还在上涨"]


def write_text(path, sentences=SENTENCES, times=40):
    path.write_text("\n".join(sentences * times) + "\n", encoding="utf-8")
    return path


def settings(text, **overrides) -> PretrainConfig:
    return PretrainConfig(**{"text": str(text), "epochs": 6, "patience": 6, "batch_size": 16, "lr": 1e-2,
                             "warmup_steps": 0, "held_out": 0.2, **overrides})


def shard_bytes(model_dir) -> list[bytes]:
    return [shard.read_bytes() for shard in checkpoint_shards(model_dir)]


@pytest.fixture(scope="module")
def pretrained(tiny_models, tmp_path_factory):
    """(model dir, its settings, the report, the random weights it started from)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    model_dir = shutil.copytree(tiny_models / "chatglm3", tmp / "chatglm3")
    random_state = {k: v.clone() for k, v in load_chatglm3(model_dir).state_dict().items()}
    config = settings(write_text(tmp / "lm_text.txt"))
    return model_dir, config, pretrain(model_dir, config), random_state


def test_loss_falls_and_held_out_text_beats_the_unigram(pretrained):
    _, _, report, _ = pretrained
    train_losses = [epoch["train_loss"] for epoch in report["epochs"]]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert report["held_out_perplexity"] < 0.5 * report["unigram_perplexity"]
    assert report["sentences"] == {"train": 160, "held_out": 40}


def test_the_checkpoint_is_the_best_epoch_in_the_official_layout(pretrained, tmp_path):
    model_dir, config, report, random_state = pretrained
    trained = load_chatglm3(model_dir).state_dict()
    assert trained.keys() == random_state.keys()
    assert all(not torch.equal(trained[k], random_state[k]) for k in trained)  # every weight trained
    # the held-out sentences as a Kaldi text, scored from the files: the loss of the epoch that was kept
    _, held_out = split_held_out(read_sentences(config.text), config.held_out, config.seed)
    kaldi_text = tmp_path / "text"
    kaldi_text.write_text("".join(f"utt{i} {sentence}\n" for i, sentence in enumerate(held_out)), encoding="utf-8")
    best = report["epochs"][report["best_epoch"] - 1]["held_out_loss"]
    result = evaluate(model_dir, config, [kaldi_text])
    assert result["perplexity"] == pytest.approx(math.exp(best), rel=1e-4)
    assert result["unigram_perplexity"] == pytest.approx(report["unigram_perplexity"])
    assert result["also_in_pretraining_text"] == len(set(held_out))


def test_training_stops_when_held_out_loss_rises_and_keeps_the_best_epoch(tiny_models, tmp_path):
    # random strings: past their character frequencies the training lines teach nothing about the held-out ones
    rng = random.Random(0)
    alphabet = sorted(set("".join(SENTENCES)))
    text = tmp_path / "random.txt"
    text.write_text("".join("".join(rng.choices(alphabet, k=12)) + "\n" for _ in range(100)), encoding="utf-8")
    model_dir = shutil.copytree(tiny_models / "chatglm3", tmp_path / "chatglm3")
    config = settings(text, epochs=30, patience=2, lr=3e-2)
    report = pretrain(model_dir, config)
    held_out_losses = [epoch["held_out_loss"] for epoch in report["epochs"]]
    assert len(held_out_losses) == report["best_epoch"] + config.patience < config.epochs
    assert held_out_losses[-1] > held_out_losses[report["best_epoch"] - 1] == min(held_out_losses)
    _, held_out = split_held_out(read_sentences(text), config.held_out, config.seed)
    kaldi_text = tmp_path / "text"
    kaldi_text.write_text("".join(f"utt{i} {sentence}\n" for i, sentence in enumerate(held_out)), encoding="utf-8")
    assert evaluate(model_dir, config, [kaldi_text])["perplexity"] == pytest.approx(
        math.exp(min(held_out_losses)), rel=1e-4)


def test_same_seed_same_bytes(tiny_models, pretrained, tmp_path):
    _, config, _, _ = pretrained
    for seed in (0, 1):
        shutil.copytree(tiny_models / "chatglm3", tmp_path / f"seed{seed}")
        pretrain(tmp_path / f"seed{seed}", replace(config, seed=seed))
    assert shard_bytes(tmp_path / "seed0") == shard_bytes(pretrained[0])
    assert shard_bytes(tmp_path / "seed1") != shard_bytes(pretrained[0])


def test_the_stamp_makes_a_second_call_a_no_op_and_refuses_other_text(pretrained, tmp_path):
    model_dir, config, report, _ = pretrained
    before = [shard.stat().st_mtime_ns for shard in checkpoint_shards(model_dir)]
    assert pretrain(model_dir, config) == report
    assert [shard.stat().st_mtime_ns for shard in checkpoint_shards(model_dir)] == before
    # weights pretrained on one text are not trained further on another
    other = settings(write_text(tmp_path / "other.txt", SENTENCES[:2]))
    with pytest.raises(ValueError, match="write the random model again"):
        pretrain(model_dir, other)


def test_stage_5_pretrains_once_and_again_when_the_text_changes(tiny_models, tmp_path, capsys):
    text = write_text(tmp_path / "lm_text.txt")
    tiny_yaml = tmp_path / "models.yaml"  # the YAML that makes downloads/models/
    tiny_yaml.write_text(yaml.safe_dump({"pretrain": asdict(settings(text))}))
    chatglm3 = tmp_path / "models" / "chatglm3"
    train_yaml = tmp_path / "train.yaml"  # a Whisper already there, without source.json, is kept as it is
    train_yaml.write_text(yaml.safe_dump({"speech_encoder_conf": {"model_path": str(tiny_models / "whisper")},
                                          "llm_conf": {"model_path": str(chatglm3)}}))

    def stage_5() -> bool:
        """Run it; whether it (re)made the ChatGLM3."""
        prepare_models([str(train_yaml)], tmp_path, tmp_path / "ct2")
        return "Stage 5: tiny ChatGLM3" in capsys.readouterr().out

    assert stage_5()
    first = shard_bytes(chatglm3)
    assert json.loads((chatglm3 / STAMP).read_text())["text_sha256"] == sha256_of(text)
    mtimes = [shard.stat().st_mtime_ns for shard in checkpoint_shards(chatglm3)]
    assert not stage_5()
    assert [shard.stat().st_mtime_ns for shard in checkpoint_shards(chatglm3)] == mtimes
    write_text(text, SENTENCES[::-1])  # same YAML, other text
    assert stage_5()
    assert json.loads((chatglm3 / STAMP).read_text())["text_sha256"] == sha256_of(text)
    assert shard_bytes(chatglm3) != first


def test_the_pretrained_ablation_is_the_recipe_model_pretrained_on_the_mini_corpus_text():
    default = yaml.safe_load((RECIPE_CONF / "tiny_models.yaml").read_text(encoding="utf-8"))
    ablation = yaml.safe_load((RECIPE_CONF / "tiny_models_pretrained.yaml").read_text(encoding="utf-8"))
    assert ablation["chatglm3"] == default["chatglm3"]
    assert read_config(RECIPE_CONF / "tiny_models_pretrained.yaml").text == "downloads/mini_aishell/lm_text.txt"


def test_a_misspelt_setting_is_an_error(tmp_path):
    (tmp_path / "tiny.yaml").write_text("pretrain:\n    text: lm_text.txt\n    epoch: 3\n")
    with pytest.raises(ValueError, match="epoch"):
        read_config(tmp_path / "tiny.yaml")
