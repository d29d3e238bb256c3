"""Write the per-layer cross-attention gate values of a trained encoder-decoder (or hybrid) speech LLM (the
paper's Figure 2a).

    python -m espnet_llm.bin.export_gates --model_file exp/encoder_decoder/short/valid.acc_current.ave.pth \
        --output exp/encoder_decoder/short/gate_values.json \
        [--config exp/encoder_decoder/short/config.yaml --data_dir dump/raw/dev --feats_dir dump/whisper_feats]

Static gates (one number a layer) are read from the checkpoint alone (no model is built, so it is quick at full
size too) and written as ``{"layers": [i, ...], "gates": [tanh(gate_i), ...], "gate": "static"}`` in LLM layer
order, the layout that ``espnet_llm.scoring.results`` plots. The value is tanh(gate), what multiplies the
cross-attention output (``espnet_llm.models.cross_attention.GatedCrossAttention``).

Dynamic gates (``model_conf.gate: dynamic``, a gate a token) have no value of their own: the model of --config is
built and run teacher-forced over --data_dir (a set of the recipe's ``dump/raw``, with the run's own history K),
and each layer's value is the mean tanh(gate) over the positions that predict the current utterance's tokens,
the ones ``acc_current`` counts, with the frozen weights in the config's dtype under training's autocast, on the
CPU or (``--ngpu 1``) a GPU. The same layout is written, with ``"gate": "dynamic"``, the K and the count of
tokens measured.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from espnet_llm.models.checkpoint import checkpoint_state

# GatedCrossAttention.gate inside CrossAttendingDecoderLayer, which replaces LLM layer <i>
GATE_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.cross_attention\.gate$")


def gate_values(model_file: str | Path) -> dict[int, float]:
    """LLM layer index -> tanh(gate), from an ESPnet checkpoint (full or trainable-only, or DeepSpeed's)."""
    return static_gates(checkpoint_state(model_file), model_file)


def static_gates(state: dict[str, torch.Tensor], model_file: str | Path) -> dict[int, float]:
    gates = gates_of(state)
    if not gates:
        raise ValueError(f"{model_file}: no cross-attention gate (*.layers.<i>.cross_attention.gate or .gate_net): "
                         "not an encoder-decoder or hybrid speech LLM checkpoint")
    return gates


def gates_of(state: dict[str, torch.Tensor]) -> dict[int, float]:
    """LLM layer index -> tanh(gate), from a model's state dict (empty for a model without cross-attention)."""
    gates = {}
    for key, value in state.items():
        match = GATE_KEY.search(key)
        if match:
            gates[int(match.group(1))] = float(torch.tanh(value.float()).item())
    return dict(sorted(gates.items()))


def dynamic_gate_means(model, batches) -> tuple[dict[int, float], int]:
    """LLM layer index -> mean tanh(gate) of a dynamic-gate model over the positions of the batches (ESPnet's
    collated dicts) that predict a current-utterance token, teacher-forced; and the count of those positions."""
    blocks = {i: model.llm.decoder_layers[i].cross_attention for i in model.cross_attention_layers}
    gates = {}  # layer -> (B, L) tanh(gate) of the last LLM call, recorded where the model computes it
    hooks = [block.gate_net.register_forward_hook(lambda _m, _in, out, i=i: gates.__setitem__(i, torch.tanh(out[..., 0].float())))
             for i, block in blocks.items()]
    sums, tokens = dict.fromkeys(blocks, 0.0), 0
    try:
        with torch.no_grad():
            for batch in batches:
                passed = model.teacher_forced_batch(batch)
                if passed is None:
                    continue
                labels = passed[2]
                # the state at t predicts the token at t + 1, as in the loss
                current = model.current_utterance_mask(labels[:, 1:])
                for i in blocks:
                    sums[i] += float(gates[i][:, :-1][current].sum())
                tokens += int(current.sum())
    finally:
        for hook in hooks:
            hook.remove()
    if not tokens:
        raise ValueError("no current-utterance token to measure the gates on")
    return {i: total / tokens for i, total in sums.items()}, tokens


def measure_dynamic_gates(config: str, model_file: str, data_dir: str, feats_dir: str | None,
                          batch_size: int, device: str = "cpu") -> dict:
    """The gate_values.json content of a dynamic-gate run, measured on the set of ``data_dir``."""
    # the models: only for dynamic gates
    from espnet2.torch_utils.device_funcs import to_device

    from espnet_llm.bin.speech_llm_inference import as_trained, load_model, speech_kind
    from espnet_llm.bin.speech_llm_runs import DATA_ENTRIES, decode_features
    from espnet_llm.tasks.speech_llm import SpeechLLMTask

    # one process, one model (the recipe measures its runs one after the other): a large one on the CPU too
    data = Path(data_dir)
    feats = decode_features(config, feats_dir, [data.name]) if feats_dir else None
    speech = f"{feats}/{data.name}/feats.scp,speech,kaldi_ark" if feats else f"{data}/wav.scp,speech,sound"
    entries = [entry.split(",") for entry in (speech, *(f"{data}/{e}" for e in DATA_ENTRIES))]
    model, train_args = load_model(config, model_file, device, allow_large_model_on_cpu=True,
                                   reads=speech_kind(entries))  # the cached features, or the audio
    loader = SpeechLLMTask.build_streaming_iterator(
        entries, preprocess_fn=SpeechLLMTask.preprocessor_for(train_args, entries),
        collate_fn=SpeechLLMTask.build_collate_fn(train_args, False), batch_size=batch_size,
        allow_variable_data_keys=True,
    )
    with as_trained(device, train_args):
        means, tokens = dynamic_gate_means(model, (to_device(batch, device) for _, batch in loader))
    return {"layers": list(means), "gates": list(means.values()), "gate": "dynamic",
            "num_history": train_args.num_history, "tokens": tokens, "data": str(data)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True, help="a checkpoint of the encoder-decoder or hybrid model")
    parser.add_argument("--output", required=True, help="gate_values.json to write")
    parser.add_argument("--config", help="the run's config.yaml (dynamic gates: the model to build)")
    parser.add_argument("--data_dir", help="dynamic gates: the set to measure them on (<dumpdir>/raw/<set>)")
    parser.add_argument("--feats_dir", help="dynamic gates, a run on cached features: stage 6's <feats_dir>")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--ngpu", type=int, default=0, choices=(0, 1), help="dynamic gates: 0: CPU, 1: one GPU")
    args = parser.parse_args(argv)
    state = checkpoint_state(args.model_file)
    if any(".cross_attention.gate_net." in key for key in state):
        if not (args.config and args.data_dir):
            parser.error(f"{args.model_file} has dynamic gates: --config and --data_dir say what to measure them on")
        result = measure_dynamic_gates(args.config, args.model_file, args.data_dir, args.feats_dir, args.batch_size,
                                       "cuda" if args.ngpu else "cpu")
    else:
        gates = static_gates(state, args.model_file)
        result = {"layers": list(gates), "gates": list(gates.values()), "gate": "static"}
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{args.output}: {result['gate']} gates: "
          + " ".join(f"layer {i}: {g:+.4f}" for i, g in zip(result["layers"], result["gates"])))


if __name__ == "__main__":
    main()
