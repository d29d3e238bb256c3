"""The decoder-only model's attention share on speech (espnet_llm.scoring.speech_attention): the aggregation on
hand-built weights, the speech positions of a prompt, and a model whose attention is uniform by construction."""
import numpy as np
import pytest
import torch

from espnet_llm.tasks.speech_llm import SpeechLLMTask
from espnet_llm.scoring.speech_attention import attention_mass, speech_attention_share, speech_positions
from test_speech_llm_models import ROWS, batch_for, build


def test_the_mass_on_the_keys_is_averaged_over_heads_and_query_tokens():
    keys = torch.tensor([[True, False, True, False], [True, True, True, False]])
    queries = torch.tensor([[False, False, False, True], [False, False, True, True]])
    uniform = torch.full((2, 2, 4, 4), 0.25)  # (B, heads, L, L)
    split = torch.zeros(2, 2, 4, 4)
    split[:, 0, :, 0] = 1.0  # head 0 looks at key 0 (speech in both rows), head 1 at key 3 (not speech)
    split[:, 1, :, 3] = 1.0
    split[0, :, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # not a query position: left out
    sums, count = attention_mass([uniform, split], keys, queries)
    assert count == 3
    # uniform: row 0 puts 2/4 on speech, row 1 3/4, at 1 and 2 tokens; split: 1/2 (mean of heads 1 and 0)
    assert (sums / count).tolist() == pytest.approx([(0.5 + 2 * 0.75) / 3, 0.5])


def test_speech_positions_skip_the_prefix_the_separators_and_the_suffix():
    segments = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])  # a history segment of 2 frames, then 3 frames
    mask = speech_positions(3, torch.tensor([5, 2]), segments, [11, 7], 12)
    assert mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0],
                                   [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="cannot hold its 5 speech frames"):
        speech_positions(3, torch.tensor([5]), segments[:1], [8], 12)


@pytest.mark.parametrize("task", ["asr_long", "ner"])
def test_uniform_attention_gives_the_speech_share_of_the_causal_context(tiny_models, task):
    """With every query projection zero, each position attends uniformly to itself and all before it: a
    current-utterance token at position t gives the row's n speech frames n / (t + 1) of its attention."""
    model = build(tiny_models, "decoder_only", task).eval()
    for layer in model.llm.decoder_layers:
        q = layer.self_attn.q_proj
        base = getattr(q, "base_layer", q)  # peft's LoRA wrapper (its B starts at zero)
        torch.nn.init.zeros_(base.weight)
        if base.bias is not None:
            torch.nn.init.zeros_(base.bias)
    batch = batch_for(model, ROWS)
    result = speech_attention_share(model, [batch])

    _, frames, _ = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    layout, expected = model.layout, []
    for (seconds, text, marked, history), n in zip(ROWS, frames.tolist()):
        prompt = len(layout.prefix_ids) + n + (len(seconds) - 1) + len(layout.suffix_ids)  # a <|sep|> per history
        target = layout.target_ids(text, marked, history)
        last_sep = max([i for i, t in enumerate(target) if t == layout.sep_id], default=-1)
        expected += [n / (prompt + i + 1) for i in range(last_sep + 1, len(target))]
    assert result["tokens"] == len(expected) and result["utterances"] == 2
    assert result["share"] == pytest.approx([sum(expected) / len(expected)] * len(model.llm.decoder_layers), abs=1e-5)
    assert model.llm.causal_lm.config._attn_implementation != "eager"  # restored


def recipe_run(tiny_models, tmp_path, arch):
    """A trained run as stage 13 finds it (config.yaml, checkpoint) with bf16 frozen weights, and a set of 2
    utterances with history (dump/raw/<set>)."""
    import soundfile
    import yaml

    from test_speech_llm_models import model_args

    args = model_args(tiny_models, arch, "ner", dtype="bfloat16")
    args.speech_encoder_conf["dtype"] = "bfloat16"
    model = SpeechLLMTask.build_model(args)
    run = tmp_path / "exp"
    run.mkdir(parents=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    torch.save({n: p for n, p in model.state_dict().items() if n in trainable}, run / "model.pth")
    (run / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    data = tmp_path / "dev"
    data.mkdir()
    rng = np.random.default_rng(0)
    tables = {"wav.scp": [], "text": [], "text_ner": [], "utt2history": []}
    for i, (text, marked) in enumerate([("北京欢迎你", "(北京)欢迎你"), ("张三来了", "[张三]来了")]):
        uid = f"S0001W000{i}"
        soundfile.write(data / f"{uid}.wav", 0.1 * rng.standard_normal(16000), 16000)
        tables["wav.scp"].append(f"{uid} {data / uid}.wav")
        tables["text"].append(f"{uid} {text}")
        tables["text_ner"].append(f"{uid} {marked}")
        tables["utt2history"].append(f"{uid} {'S0001W0000' if i else ''}".rstrip())
    for name, lines in tables.items():
        (data / name).write_text("\n".join(lines) + "\n")
    return run, data


def test_stage_13_measures_a_bf16_model_above_the_cpu_limit_under_autocast(tiny_models, tmp_path, monkeypatch):
    """The attention share and the dynamic gates read a run as decoding does: frozen bf16 weights under autocast,
    and a model the CPU decode refuses (over LARGE_ON_CPU: ChatGLM3-6B) is measured, one process holding it."""
    import json

    from espnet_llm.bin import export_gates, speech_attention, speech_llm_inference

    monkeypatch.setattr(speech_llm_inference, "LARGE_ON_CPU", 1000)  # the tiny model counts as large
    run, data = recipe_run(tiny_models, tmp_path / "do", "decoder_only")
    speech_attention.main(["--train_config", str(run / "config.yaml"), "--model_file", str(run / "model.pth"),
                           "--data_dir", str(data), "--output", str(run / "speech_attention.json")])
    share = json.loads((run / "speech_attention.json").read_text())
    assert share["utterances"] == 2 and all(0 < s < 1 for s in share["share"])
    run, data = recipe_run(tiny_models, tmp_path / "ed", "encoder_decoder_dyngate")
    export_gates.main(["--model_file", str(run / "model.pth"), "--config", str(run / "config.yaml"),
                       "--data_dir", str(data), "--output", str(run / "gate_values.json")])
    gates = json.loads((run / "gate_values.json").read_text())
    assert gates["gate"] == "dynamic" and gates["tokens"] > 0 and all(-1 < g < 1 for g in gates["gates"])
