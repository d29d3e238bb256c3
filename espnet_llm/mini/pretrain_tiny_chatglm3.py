"""Pretraining of the tiny ChatGLM3 as a causal LM on plain Chinese text, in place, before the speech phases.

The mini recipe's tiny ChatGLM3 is random; the speech phases keep it frozen under LoRA, so whatever it knows
of Chinese it must know before. Each sentence is a reply, as the speech LLMs' targets are (models/prompts.py):
``[gMASK] sop <|assistant|> \n`` then ``encode(sentence) </s>``, the loss on the reply only. Every weight trains
(AdamW, linear warmup and decay); a held-out part of the text, drawn by the seed, picks the epoch: training
stops once it has not improved for ``patience`` epochs and the best epoch's weights are written back into the
official checkpoint. The baseline is a character unigram of the training part (add-one over the tokenizer's
vocabulary) on the same held-out tokens. Deterministic for a seed and thread count.

``DIR/pretrain.json`` is the report and the stamp: text sha256, settings, loss per epoch, held-out and unigram
perplexity. A call whose stamp matches the text and settings is a no-op; a model stamped with other ones is
refused (it is no longer random: write it again with make_tiny_models).
Settings: the ``pretrain:`` mapping of a tiny_models YAML (PretrainConfig; conf/tiny/tiny_models_pretrained.yaml).

    python -m espnet_llm.mini.pretrain_tiny_chatglm3 --model_dir DIR --config YAML                 # stage 5 does this
    python -m espnet_llm.mini.pretrain_tiny_chatglm3 --model_dir DIR --config YAML --eval data/dev/text data/test/text
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from itertools import chain
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from transformers import get_linear_schedule_with_warmup

from espnet_llm.llm.chatglm3 import load_chatglm3, save_into_chatglm3
from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer

STAMP = "pretrain.json"
IGNORE = -100


@dataclass(frozen=True)
class PretrainConfig:
    text: str  # one sentence a line; a relative path is from the recipe directory
    seed: int = 0
    held_out: float = 0.05  # fraction of the sentences that picks the epoch
    epochs: int = 3  # at most
    patience: int = 1  # epochs without a better held-out loss before stopping
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01

    @classmethod
    def from_mapping(cls, mapping: dict) -> PretrainConfig:
        unknown = set(mapping) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"pretrain: unknown keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**mapping)


def read_config(yaml_file) -> PretrainConfig | None:
    """The ``pretrain:`` mapping of a tiny_models YAML, or None where it has none."""
    mapping = (yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")) or {}).get("pretrain")
    return None if mapping is None else PretrainConfig.from_mapping(mapping)


def reply_context(tokenizer: ChatGLM3Tokenizer) -> list[int]:
    """What precedes an answer in the speech LLMs' prompts, less the user turn that plain text lacks."""
    return tokenizer.prefix_ids + tokenizer.build_message("assistant", "")


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_stamp(model_dir) -> dict | None:
    try:
        return json.loads((Path(model_dir) / STAMP).read_text())
    except FileNotFoundError:
        return None


def is_pretrained(model_dir, config: PretrainConfig) -> bool:
    """Whether model_dir holds the pretraining of exactly this text (by hash) and these settings."""
    stamp = read_stamp(model_dir)
    return stamp is not None and stamp["config"] == asdict(config) and stamp["text_sha256"] == sha256_of(config.text)


def read_sentences(path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_kaldi_text(path) -> list[str]:
    """The sentences of a Kaldi text file (``uttid sentence`` lines)."""
    return [parts[1].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
            if len(parts := line.split(maxsplit=1)) == 2]


def split_held_out(sentences: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) sentences, the held-out ones drawn by the seed (the text may be sorted)."""
    shuffled = list(sentences)
    random.Random(seed).shuffle(shuffled)
    count = max(1, round(fraction * len(shuffled)))
    return shuffled[count:], shuffled[:count]


def reply_ids(tokenizer: ChatGLM3Tokenizer, sentences: list[str]) -> list[list[int]]:
    return [tokenizer.encode(sentence) + [tokenizer.eos_id] for sentence in sentences]


def batch_nll(model, context: list[int], replies: list[list[int]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the replies after the context, and their number of tokens."""
    rows = [context + reply for reply in replies]
    ids = torch.full((len(rows), max(map(len, rows))), pad_id)
    labels = torch.full_like(ids, IGNORE)
    for i, (row, reply) in enumerate(zip(rows, replies)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(context) : len(row)] = torch.tensor(reply)
    # Padding is on the right: causal attention keeps it out of every real token's view, so no mask.
    logits = model(input_ids=ids).logits[:, :-1]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")
    return nll, int((labels != IGNORE).sum())


@torch.no_grad()
def mean_nll(model, context: list[int], replies: list[list[int]], pad_id: int, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(replies), batch_size):
        nll, n = batch_nll(model, context, replies[start : start + batch_size], pad_id)
        total, count = total + nll.item(), count + n
    return total / count


def unigram_nll(train: list[list[int]], held_out: list[list[int]], vocab_size: int) -> float:
    """Mean negative log-likelihood of the held-out tokens under the add-one unigram of the training tokens."""
    counts = Counter(chain.from_iterable(train))
    denominator = sum(counts.values()) + vocab_size
    tokens = list(chain.from_iterable(held_out))
    return -sum(math.log((counts[t] + 1) / denominator) for t in tokens) / len(tokens)


def length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of sentences of about one length (little padding), their make-up and order drawn anew each epoch."""
    order = torch.randperm(len(lengths), generator=generator)
    order = order[torch.argsort(lengths[order], stable=True)]  # random among equal lengths
    batches = order.split(batch_size)
    return [batches[i].tolist() for i in torch.randperm(len(batches), generator=generator)]


def pretrain(model_dir, config: PretrainConfig) -> dict:
    """Pretrain the ChatGLM3 in model_dir (official layout) in place unless its stamp says it is done; the report."""
    model_dir = Path(model_dir)
    text_sha256 = sha256_of(config.text)
    stamp = read_stamp(model_dir)
    if stamp is not None:
        if is_pretrained(model_dir, config):
            print(f"{model_dir}: pretrained on {config.text} already ({STAMP})", flush=True)
            return stamp
        raise ValueError(f"{model_dir} was pretrained on {stamp['text']} (sha256 {stamp['text_sha256'][:12]}) with "
                         f"{stamp['config']}: write the random model again (make_tiny_models) before pretraining it")
    start = time.time()
    torch.manual_seed(config.seed)  # the global generator: attention dropout, where a config.json has some
    tokenizer = ChatGLM3Tokenizer(model_dir / "tokenizer.model")
    context = reply_context(tokenizer)
    train_text, held_out_text = split_held_out(read_sentences(config.text), config.held_out, config.seed)
    train, held_out = reply_ids(tokenizer, train_text), reply_ids(tokenizer, held_out_text)
    unigram = math.exp(unigram_nll(train, held_out, len(tokenizer)))
    print(f"Pretraining {model_dir} on {config.text}: {len(train)} sentences ({sum(map(len, train))} tokens), "
          f"{len(held_out)} held out; their unigram perplexity {unigram:.1f}", flush=True)

    model = load_chatglm3(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    lengths = torch.tensor([len(reply) for reply in train])
    epochs, best, best_state = [], None, None
    for epoch in range(1, config.epochs + 1):
        epoch_start, total, count = time.time(), 0.0, 0
        model.train()
        for batch in length_batches(lengths, config.batch_size, generator):
            nll, n = batch_nll(model, context, [train[i] for i in batch], tokenizer.pad_id)
            (nll / n).backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total, count = total + nll.item(), count + n
        held_out_loss = mean_nll(model, context, held_out, tokenizer.pad_id, config.batch_size)
        epochs.append({"epoch": epoch, "train_loss": total / count, "held_out_loss": held_out_loss,
                       "seconds": round(time.time() - epoch_start, 1)})
        print(f"epoch {epoch}/{config.epochs}: train loss {total / count:.3f}, held-out loss {held_out_loss:.3f} "
              f"(perplexity {math.exp(held_out_loss):.1f}), {time.time() - epoch_start:.0f} s", flush=True)
        if best is None or held_out_loss < best["held_out_loss"]:
            best, best_state = epochs[-1], {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best["epoch"] >= config.patience:
            break
    model.load_state_dict(best_state)
    save_into_chatglm3(model, model_dir)
    report = {
        "text": config.text,
        "text_sha256": text_sha256,
        "config": asdict(config),
        "sentences": {"train": len(train), "held_out": len(held_out)},
        "tokens": {"train": sum(map(len, train)), "held_out": sum(map(len, held_out))},
        "epochs": epochs,
        "best_epoch": best["epoch"],
        "held_out_perplexity": math.exp(best["held_out_loss"]),
        "unigram_perplexity": unigram,
        "seconds": round(time.time() - start, 1),
    }
    (model_dir / STAMP).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{model_dir}: epoch {best['epoch']} kept, held-out perplexity {report['held_out_perplexity']:.1f} "
          f"(unigram {unigram:.1f}), {report['seconds']:.0f} s", flush=True)
    return report


def evaluate(model_dir, config: PretrainConfig, kaldi_texts: list[Path]) -> dict:
    """The model's perplexity on the sentences of Kaldi text files, and that of the unigram of the training part
    of the config's text (the sentences the model pretrained on)."""
    tokenizer = ChatGLM3Tokenizer(Path(model_dir) / "tokenizer.model")
    pretraining = read_sentences(config.text)
    train_text, _ = split_held_out(pretraining, config.held_out, config.seed)
    sentences = [sentence for path in kaldi_texts for sentence in read_kaldi_text(path)]
    replies = reply_ids(tokenizer, sentences)
    context = reply_context(tokenizer)
    nll = mean_nll(load_chatglm3(model_dir), context, replies, tokenizer.pad_id, config.batch_size)
    return {
        "sentences": len(sentences),
        "tokens": sum(map(len, replies)),
        "also_in_pretraining_text": len(set(sentences) & set(pretraining)),  # 0 for a held-out figure
        "perplexity": math.exp(nll),
        "unigram_perplexity": math.exp(unigram_nll(reply_ids(tokenizer, train_text), replies, len(tokenizer))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", type=Path, required=True, help="ChatGLM3 directory in the official layout")
    parser.add_argument("--config", type=Path, required=True, help="YAML with a pretrain: mapping")
    parser.add_argument("--eval", type=Path, nargs="+", metavar="KALDI_TEXT",
                        help="print the perplexity on these `uttid sentence` files instead of pretraining")
    args = parser.parse_args(argv)
    config = read_config(args.config)
    if config is None:
        parser.error(f"{args.config} has no pretrain: mapping")
    if args.eval:
        result = evaluate(args.model_dir, config, args.eval)
        print(f"{' + '.join(map(str, args.eval))}: {result['sentences']} sentences ({result['tokens']} tokens, "
              f"{result['also_in_pretraining_text']} also in {config.text}): perplexity {result['perplexity']:.1f}, "
              f"character unigram {result['unigram_perplexity']:.1f}")
    else:
        pretrain(args.model_dir, config)


if __name__ == "__main__":
    main()
