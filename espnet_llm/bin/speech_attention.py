"""The decoder-only model's per-layer attention share on the speech of its prompt (the paper's Figure 2b), on a
data set, teacher-forced (espnet_llm.scoring.speech_attention), written where make_results reads it.

    python -m espnet_llm.bin.speech_attention --train_config exp/decoder_only/long_k2/config.yaml \
        --model_file exp/decoder_only/long_k2/valid.acc_current.ave.pth --data_dir dump/raw/dev \
        [--feats_dir dump/whisper_feats/dev] [--ngpu 1] --output exp/decoder_only/long_k2/speech_attention.json

The model runs as in training: its frozen weights in the config's dtype, under the same autocast. One process
holds one model (the recipe measures its runs one after the other), so a full-size model is measured on the
CPU too when no GPU is asked for.

Writes ``{"set": ..., "num_history": K, "layers": [i, ...], "share": [...], "tokens": N, "utterances": N}``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from espnet2.torch_utils.device_funcs import to_device

from espnet_llm.bin.speech_llm_inference import as_trained, load_model, speech_kind
from espnet_llm.scoring.speech_attention import speech_attention_share
from espnet_llm.tasks.speech_llm import SpeechLLMTask


def data_entries(data_dir: str, feats_dir: str | None) -> list[tuple[str, str, str]]:
    """The speech (audio, or the cached Whisper features the run was trained on), targets and history of a set."""
    speech = (f"{feats_dir}/feats.scp", "speech", "kaldi_ark") if feats_dir else (f"{data_dir}/wav.scp", "speech", "sound")
    return [speech, (f"{data_dir}/text", "text", "text"), (f"{data_dir}/text_ner", "text_ner", "text"),
            (f"{data_dir}/utt2history", "history", "text")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_config", required=True, help="a decoder-only run's config.yaml")
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--data_dir", required=True, help="wav.scp, text, text_ner, utt2history")
    parser.add_argument("--feats_dir", help="the set's cached Whisper features, for a run trained on them")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--ngpu", type=int, default=0, choices=(0, 1), help="0: CPU, 1: one GPU")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")

    device = "cuda" if args.ngpu else "cpu"
    entries = data_entries(args.data_dir, args.feats_dir)
    model, train_args = load_model(args.train_config, args.model_file, device, allow_large_model_on_cpu=True,
                                   reads=speech_kind(entries))  # the cached features, or the audio
    if train_args.model != "decoder_only":
        raise SystemExit(f"Error: {args.train_config}: model {train_args.model}: the attention share on the "
                         f"prompt's speech is measured on the decoder-only model")
    loader = SpeechLLMTask.build_streaming_iterator(
        entries, preprocess_fn=SpeechLLMTask.preprocessor_for(train_args, entries),
        collate_fn=SpeechLLMTask.build_collate_fn(train_args, False), batch_size=args.batch_size,
        inference=True, allow_variable_data_keys=True)
    with as_trained(device, train_args):
        result = speech_attention_share(model, (to_device(batch, device) for _, batch in loader))
    history = train_args.num_history if train_args.prompt_task != "asr_short" else 0
    out = {"set": Path(args.data_dir).name, "num_history": history,
           "layers": list(range(len(result["share"]))), **result}
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"{args.output}: " + " ".join(f"layer {i}: {s:.3f}" for i, s in enumerate(result["share"])))


if __name__ == "__main__":
    main()
