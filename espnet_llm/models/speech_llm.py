"""What both speech LLMs share: encoding the speech segments, skipping broken utterances, the target loss,
trainable-only checkpoints, and batched generation.

A batch row holds one utterance and, for the long-form tasks, its history: ``speech`` is the audio of the
K previous utterances followed by the current one, ``speech_segments`` says where each ends. Each
segment goes through Whisper on its own (as Whisper was trained, at most 30 s each) and the encoded
segments are joined in time order, each frame with a learned embedding of its segment's place (counted back
from the current utterance), and each answer token carries a learned embedding of the part it writes (counted
the same way): without the latter, the long-form models of the mini recipe wrote another segment's transcript
for the current one (dev CER 94-99 %, with it 18-20 %).
A row whose ``speech_lengths`` is 0 is a broken utterance (the preprocessor already said why); it is
skipped, named in the log and counted.
"""
from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import LogitsProcessorList

from espnet_llm.llm.lora_llm import positions
from espnet_llm.models.prompts import AnswerShape, ParsedOutput, PromptLayout

IGNORE = -100


class SpeechLLM(AbsESPnetModel):
    def __init__(
        self,
        speech_encoder: nn.Module,
        adapter: nn.Module | None,
        llm: nn.Module,
        layout: PromptLayout,
        save_trainable_only: bool = True,
        extract_feats_in_collect_stats: bool = False,  # nothing to normalise: collect_stats only counts lengths
        max_segments: int = 8,  # part embeddings learned; older history segments share the last one
        ctc_weight: float = 0.0,
    ):
        super().__init__()
        self.speech_encoder = speech_encoder
        self.adapter = adapter
        self.llm = llm
        self.layout = layout
        self.save_trainable_only = save_trainable_only
        self.extract_feats_in_collect_stats = extract_feats_in_collect_stats
        self.num_broken = 0
        # speech reliance in evaluation mode: a second teacher-forced pass; the trainer measures it at the last
        # epoch only (PhaseTrainer), where RESULTS.md reads it
        self.measure_speech_reliance = True
        # which part of the answer a position writes, counted back from the current utterance (0), as the
        # speech segments are: added to the answer's inputs so that part k can find segment k
        self.part_embedding = nn.Embedding(max_segments, llm.hidden_size)
        nn.init.zeros_(self.part_embedding.weight)
        # and the same count on the speech, in Whisper's space, before the adapter or the cross-attention. The
        # history segments' rows start random (norm about 22 at 512 dims, beside frames of norm about 30 in
        # Whisper base), so that they differ from the current utterance from the first step; the current one's
        # row starts at zero, so that short form is the plain speech. Zero-started after the adapter instead,
        # the decoder-only model's stayed 100x smaller than the adapted frames, and its long form transcribed a
        # neighbouring segment in the current one's place; all rows random cut its short form's speech reliance
        # from 2.7 to 0.2 nats.
        self.segment_embedding = nn.Embedding(max_segments, speech_encoder.output_size())
        nn.init.zeros_(self.segment_embedding.weight[0])
        for p in self.speech_encoder.parameters():
            p.requires_grad_(False)  # Whisper stays frozen in every phase
        # Beyond the paper (its configs leave it at 0): a CTC loss of the current utterance's transcript on its
        # speech memory (after the adapter), weighted into the loss. It tells the adapter which sounds are which
        # characters from the first step, where the LLM's cross-entropy must find the alignment first.
        self.ctc_weight = ctc_weight
        if ctc_weight > 0:
            self.ctc_head = nn.Linear(self.memory_size, llm.config.vocab_size)

    def to(self, *args, **kwargs):
        """Moves the model; a dtype given (ESPnet's main_worker casts every model to ``--train_dtype``) must be
        float32, what trains already is, and the frozen Whisper and LLM keep the dtype of their config: cast,
        ChatGLM3-6B's bf16 weights would double to 25 GB in float32."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"train_dtype {str(dtype).removeprefix('torch.')}: the speech LLMs train float32 weights "
                             "(under autocast with use_amp), beside frozen weights in the dtype their config names")
        return super().to(device=device, non_blocking=non_blocking) if device is not None else self

    @property
    def memory_size(self) -> int:
        """The width of the speech memory: the adapter's output, or Whisper's without an adapter."""
        return self.adapter.output_size if self.adapter is not None else self.speech_encoder.output_size()

    # ---------------------------------------------------------------- speech
    def encode_speech(self, speech, speech_lengths, segment_lengths=None):
        """-> memory (B, S, D), memory_lengths (B,), memory_segments (B, S): the encoded (and adapted) segments
        of each row, joined, and each frame's segment counted back from the current utterance (0; the one
        before it 1, ...), which tells the models which audio is the current utterance."""
        pieces, owner, back = [], [], []
        for b in range(speech.shape[0]):
            lens = [int(speech_lengths[b])] if segment_lengths is None else [int(x) for x in segment_lengths[b] if x > 0]
            start = 0
            for i, n in enumerate(lens):
                pieces.append(speech[b, start:start + n])
                owner.append(b)
                back.append(len(lens) - 1 - i)
                start += n
        if not pieces:
            raise ValueError("no speech in the batch")
        wav = pad_sequence(pieces, batch_first=True)
        wav_lengths = torch.tensor([len(p) for p in pieces], device=speech.device)
        with torch.no_grad():
            feats, feat_lengths = self.speech_encoder(wav, wav_lengths)
        back_ids = self.segment_parts(torch.tensor(back, device=speech.device))
        feats = feats + self.segment_embedding(back_ids)[:, None].to(feats.dtype)  # padding: zeroed or masked later
        if self.adapter is not None:
            feats, feat_lengths = self.adapter(feats, feat_lengths)
        rows: list[list[torch.Tensor]] = [[] for _ in range(speech.shape[0])]
        row_segments: list[list[torch.Tensor]] = [[] for _ in range(speech.shape[0])]
        for i, b in enumerate(owner):
            n = int(feat_lengths[i])
            rows[b].append(feats[i, :n])
            row_segments[b].append(torch.full((n,), back[i], dtype=torch.long, device=speech.device))
        joined = [torch.cat(r) for r in rows]
        memory = pad_sequence(joined, batch_first=True)
        segments = pad_sequence([torch.cat(r) for r in row_segments], batch_first=True)
        return memory, torch.tensor([len(j) for j in joined], device=speech.device), segments

    def drop_broken(self, utt_id, speech_lengths) -> torch.Tensor:
        """Indices of the usable rows; logs the broken ones by id."""
        broken = (speech_lengths == 0).nonzero().flatten().tolist()
        if broken:
            self.num_broken += len(broken)
            names = [utt_id[i] if utt_id is not None else f"row {i}" for i in broken]
            logging.warning(
                f"skipping {len(broken)} broken utterance(s) (unreadable, empty or too long; see the reason logged "
                f"when loading): {' '.join(names)}; {self.num_broken} skipped so far in this process"
            )
        return (speech_lengths > 0).nonzero().flatten()

    # ---------------------------------------------------------------- training
    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        speech_segments: torch.Tensor | None = None,
        speech_segments_lengths: torch.Tensor | None = None,
        utt_id: list[str] | None = None,
        **kwargs,
    ):
        keep = self.drop_broken(utt_id, speech_lengths)
        if len(keep) == 0:
            # every parameter still takes part, so DDP's gradient all-reduce stays in step
            loss = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return force_gatherable((loss, {"loss": None, "acc": None, "acc_current": None}, torch.tensor(0)), loss.device)
        speech, speech_lengths = speech[keep], speech_lengths[keep]
        text, text_lengths = text[keep], text_lengths[keep]
        if speech_segments is not None:
            speech_segments = speech_segments[keep]
        memory, memory_lengths, memory_segments = self.encode_speech(speech, speech_lengths, speech_segments)
        targets = [text[b, : int(text_lengths[b])] for b in range(len(keep))]
        loss, acc, acc_current = self.target_loss(memory, memory_lengths, memory_segments, targets)
        stats = {"loss": loss.detach(), "acc": acc, "acc_current": acc_current}
        if self.ctc_weight > 0:
            ctc = self.ctc_loss(memory, memory_lengths, memory_segments, targets)
            stats["loss_ctc"] = ctc.detach()
            loss = loss + self.ctc_weight * ctc
        if not self.training and self.measure_speech_reliance:
            stats.update(self.speech_reliance(loss, memory, memory_lengths, memory_segments, targets))
        return force_gatherable((loss, stats, torch.tensor(len(keep))), loss.device)

    def target_loss(self, memory, memory_lengths, memory_segments, targets):
        """-> cross-entropy over the target tokens, their accuracy, and the accuracy on the current utterance's
        tokens alone (after the last separator): in long form two thirds of a target are the history's
        transcripts, which the prompt's own history makes easy, so checkpoints are chosen on the latter."""
        hidden, labels = self.teacher_forced_states(memory, memory_lengths, targets, memory_segments)
        # states at position t predict the token at t + 1; only target positions are scored
        hidden, labels = hidden[:, :-1], labels[:, 1:]
        scored = labels != IGNORE
        logits = self.llm.logits(hidden[scored]).float()
        gold = labels[scored]
        loss = nn.functional.cross_entropy(logits, gold)
        correct = (logits.argmax(-1) == gold).float()
        current = self.current_utterance_mask(labels)[scored]
        return loss, correct.mean().detach(), correct[current].mean().detach()

    def ctc_loss(self, memory, memory_lengths, memory_segments, targets) -> torch.Tensor:
        """CTC (blank: id 0, ChatGLM3's <unk>, which byte fallback never writes) of each row's current transcript
        on the current utterance's frames of the memory, per target token."""
        frames, transcripts = [], []
        for b, n in enumerate(memory_lengths.tolist()):
            frames.append(memory[b, :n][memory_segments[b, :n] == 0])
            transcripts.append(self.current_transcript(targets[b]))
        log_probs = self.ctc_head(pad_sequence(frames, batch_first=True)).float().log_softmax(-1)
        loss = nn.functional.ctc_loss(
            log_probs.transpose(0, 1), torch.cat(transcripts), torch.tensor([len(f) for f in frames]),
            torch.tensor([len(t) for t in transcripts]), blank=0, reduction="sum", zero_infinity=True)
        return loss / max(1, sum(len(t) for t in transcripts))

    def current_transcript(self, target: torch.Tensor) -> torch.Tensor:
        """The current utterance's plain transcript in a target: after the last separator, before <|ner|> or </s>."""
        seps = (target == self.layout.sep_id).nonzero().flatten()
        current = target[int(seps[-1]) + 1:] if len(seps) else target
        ends = ((current == self.layout.ner_id) | (current == self.layout.eos_id)).nonzero().flatten()
        return current[:int(ends[0])] if len(ends) else current

    def answer_parts(self, target: torch.Tensor) -> torch.Tensor:
        """(T,) the answer part each target token, as an input, predicts the next token of: K (the first history
        transcript) down to 0 (the current utterance, and its marked copy), counted back as the speech segments."""
        seps_so_far = (target == self.layout.sep_id).long().cumsum(0)
        return self.segment_parts((seps_so_far[-1] - seps_so_far).clamp(min=0))

    def segment_parts(self, segments: torch.Tensor) -> torch.Tensor:
        """Segments counted back from the current utterance -> their part (older ones share the last)."""
        return segments.clamp(max=self.part_embedding.num_embeddings - 1)

    def current_utterance_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, L) True at the target tokens that come after the row's last separator (all of them without one)."""
        is_sep = (labels == self.layout.sep_id).long()
        seps_after = is_sep.flip(1).cumsum(1).flip(1)  # separators at or after each position
        return (labels != IGNORE) & (seps_after == 0)

    @torch.no_grad()
    def speech_reliance(self, loss, memory, memory_lengths, memory_segments, targets) -> dict:
        """The same loss with each row given the next row's speech (rolled within the batch): a model that
        listens does much worse on speech that is not its own. None for a batch of one row."""
        if memory.shape[0] < 2:
            return {"loss_other_speech": None, "speech_reliance": None}
        rolled = [t.roll(1, 0) for t in (memory, memory_lengths, memory_segments)]
        other, _, _ = self.target_loss(*rolled, targets)
        return {"loss_other_speech": other.detach(), "speech_reliance": (other - loss).detach()}

    def collect_feats(self, speech, speech_lengths, **kwargs):
        return {"feats": speech, "feats_lengths": speech_lengths}

    def prompt_embeddings(self, memory, memory_lengths, memory_segments) -> list[torch.Tensor]:
        """Each row's prompt as embeddings (P_b, H)."""
        device = memory.device
        prefix = self.llm.embed(torch.tensor(self.layout.prefix_ids, device=device))
        suffix = self.llm.embed(torch.tensor(self.layout.suffix_ids, device=device))
        rows = []
        for b, n in enumerate(memory_lengths.tolist()):
            segments = memory_segments[b, :n]
            # the last prompt token predicts the first answer token, of the oldest segment's part
            first_part = self.part_embedding(self.segment_parts(segments[:1]))
            last = suffix[-1:] + first_part.to(suffix.dtype)
            rows.append(torch.cat([prefix, self.speech_in_prompt(memory[b, :n], segments), suffix[:-1], last]))
        return rows

    def teacher_forced_states(self, memory, memory_lengths, targets, memory_segments):
        """Right-padded [prompt | target] through the LLM -> states (B, L, H) and labels (B, L)."""
        prompts = self.prompt_embeddings(memory, memory_lengths, memory_segments)
        rows, labels = [], []
        for prompt, target in zip(prompts, targets):
            answer = self.llm.embed(target)
            answer = answer + self.part_embedding(self.answer_parts(target)).to(answer.dtype)
            rows.append(torch.cat([prompt, answer]))
            labels.append(torch.cat([target.new_full((len(prompt),), IGNORE), target]))
        embeds = pad_sequence(rows, batch_first=True)
        labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE)
        with self.attending_to(memory, memory_lengths, memory_segments):
            return self.llm.hidden_states(embeds), labels  # right-padded: no mask needed (see hidden_states)

    def teacher_forced_batch(self, batch: dict):
        """A collated batch through the LLM teacher-forced, as in the loss, broken rows left out: for the
        measurements that hook into the LLM (gate values, attention on speech). -> memory_lengths (B,),
        memory_segments (B, S) and labels (B, L) of the rows kept; None if none is left."""
        keep = self.drop_broken(None, batch["speech_lengths"])
        if len(keep) == 0:
            return None
        segments = batch.get("speech_segments")
        memory, lengths, memory_segments = self.encode_speech(
            batch["speech"][keep], batch["speech_lengths"][keep], None if segments is None else segments[keep])
        targets = [batch["text"][b, : int(batch["text_lengths"][b])] for b in keep.tolist()]
        _, labels = self.teacher_forced_states(memory, lengths, targets, memory_segments)
        return lengths, memory_segments, labels

    # ---------------------------------------------------------------- architecture hooks
    @abstractmethod
    def speech_in_prompt(self, feats: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """The speech embeddings a row puts in its prompt (none for the encoder-decoder)."""

    @abstractmethod
    def attending_to(self, memory, memory_lengths, memory_segments, repeat: int = 1):
        """A context in which the LLM sees the speech memory (a no-op for the decoder-only model)."""

    # ---------------------------------------------------------------- decoding
    def left_padded_prompts(self, memory, memory_lengths, memory_segments) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts as embeddings (B, P, H) and attention mask (B, P), left-padded: every row's last prompt
        token sits at the same place, where generation continues."""
        prompts = self.prompt_embeddings(memory, memory_lengths, memory_segments)
        width = max(len(p) for p in prompts)
        embeds = torch.stack([nn.functional.pad(p, (0, 0, width - len(p), 0)) for p in prompts])
        mask = torch.stack(
            [torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]
        ).long().to(embeds.device)
        return embeds, mask

    def prompt_cache(self, embeds, mask, memory, memory_lengths, memory_segments, beam_size: int):
        """The KV cache of the prompt but its last position, run through the LLM for the B rows once and repeated
        for the beams. Left alone, transformers' beam search repeats the prompt (with the decoder-only model's
        speech embeddings) beam_size times before running it. The last position is left to generate, whose
        first step needs its logits."""
        with self.attending_to(memory, memory_lengths, memory_segments):
            cache = self.llm.causal_lm.model(
                inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
                use_cache=True,
            ).cache
        cache.batch_repeat_interleave(beam_size)  # in transformers' order: the beams of a row side by side
        return cache

    @torch.no_grad()
    def generate(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        speech_segments: torch.Tensor | None = None,
        beam_size: int = 1,
        max_new_tokens: int = 200,
        nbest: int = 1,
        **kwargs,
    ) -> list[list[tuple[list[int], torch.Tensor, ParsedOutput]]]:
        """Batched greedy (beam_size 1) or beam search with the KV cache, for rows that are not broken.

        Returns per row its ``nbest`` answers in the search's order, each (generated ids, the log-probability of
        each answer token and of the end token, parsed output); broken rows must be removed before.
        """
        if not 1 <= nbest <= beam_size:
            raise ValueError(f"nbest {nbest}: between 1 and the beam size ({beam_size})")
        memory, memory_lengths, memory_segments = self.encode_speech(speech, speech_lengths, speech_segments)
        embeds, mask = self.left_padded_prompts(memory, memory_lengths, memory_segments)
        cache = None  # greedy search runs the prompt for the B rows anyway
        if beam_size > 1:
            cache = self.prompt_cache(embeds, mask, memory, memory_lengths, memory_segments, beam_size)
        # the embedding rows past the tokenizer (ChatGLM3 pads 64,802 tokens to 65,024) are no tokens
        rows_without_token = list(range(len(self.llm.tokenizer), self.llm.model.config.vocab_size))
        # the answer has a separator after each history utterance the row had
        num_history = [0] * len(speech) if speech_segments is None else ((speech_segments > 0).sum(1) - 1).tolist()
        per_beam = [k for k in num_history for _ in range(beam_size)]  # transformers' order: a row's beams side by side
        shape = AnswerShape(self.layout, per_beam)
        with self.attending_to(memory, memory_lengths, memory_segments, repeat=beam_size), self.tagging_parts(per_beam):
            # GlmForCausalLM's generate: peft's puts back its own prepare_inputs_for_generation (LoRA is in place)
            sequences = self.llm.causal_lm.generate(
                logits_processor=LogitsProcessorList([shape]),
                suppress_tokens=rows_without_token or None,
                inputs_embeds=embeds,
                attention_mask=mask,
                cache=cache,
                max_new_tokens=max_new_tokens,
                num_beams=beam_size,
                num_return_sequences=nbest,
                do_sample=False,
                eos_token_id=self.layout.stop_ids,
                pad_token_id=self.layout.eos_id,
                use_cache=True,
            ).tolist()  # the generated tokens only (no input ids), a row's nbest side by side
        answers, scored = [], []
        for seq in sequences:
            ids = seq
            for stop in self.layout.stop_ids:
                if stop in ids:
                    ids = ids[: ids.index(stop)]
            answers.append(ids)
            scored.append(seq[: len(ids) + 1])  # with the token that ended it; one that ran on has none
        rows = torch.arange(len(speech), device=memory.device).repeat_interleave(nbest)
        log_probs = self.answer_log_probs(memory[rows], memory_lengths[rows], memory_segments[rows], scored)
        results = []
        for b in range(len(speech)):
            row = []
            for i in range(b * nbest, (b + 1) * nbest):
                truncated = len(answers[i]) == len(sequences[i])  # a row that ended is padded with an end token
                row.append((answers[i], log_probs[i], self.layout.parse(answers[i], num_history[b], truncated)))
            results.append(row)
        return results

    @torch.no_grad()
    def answer_log_probs(self, memory, memory_lengths, memory_segments, answers: list[list[int]]) -> list[torch.Tensor]:
        """The log-probability of each token of each answer (its end token included, where it has one) under the
        model, teacher-forced as in training: greedy and beam search answers are scored alike (transformers'
        beam scores are length-normalised, its greedy ones are not, and its layout mask renormalises only one)."""
        targets = [torch.tensor(a, dtype=torch.long, device=memory.device) for a in answers]
        hidden, labels = self.teacher_forced_states(memory, memory_lengths, targets, memory_segments)
        hidden, labels = hidden[:, :-1], labels[:, 1:]
        out = []
        for b in range(len(answers)):
            scored = labels[b] != IGNORE
            log_probs = self.llm.logits(hidden[b][scored]).float().log_softmax(-1)
            out.append(log_probs.gather(-1, labels[b][scored][:, None])[:, 0].cpu())
        return out

    @contextlib.contextmanager
    def tagging_parts(self, num_history: list[int]):
        """A context in which transformers' generate feeds each new token with its answer part added, as training
        does (the prompt's embeddings carry theirs already). generate embeds the new tokens itself, so the step's
        inputs are rewritten where it prepares them; the full sequences there are in the beams' current order."""
        causal_lm = self.llm.causal_lm
        prepare = causal_lm.prepare_inputs_for_generation
        num_history = torch.tensor(num_history)

        def prepare_with_parts(input_ids, inputs_embeds=None, **kwargs):  # generate looks for inputs_embeds here
            inputs = prepare(input_ids, inputs_embeds=inputs_embeds, **kwargs)
            new = inputs.get("input_ids")
            if new is not None:
                seps = (input_ids == self.layout.sep_id).sum(1)
                parts = self.segment_parts((num_history.to(seps.device) - seps).clamp(min=0))
                embeds = self.llm.embed(new)
                inputs["input_ids"] = None
                inputs["inputs_embeds"] = embeds + self.part_embedding(parts)[:, None].to(embeds.dtype)
            return inputs

        causal_lm.prepare_inputs_for_generation = prepare_with_parts
        try:
            yield
        finally:
            del causal_lm.prepare_inputs_for_generation

    # ---------------------------------------------------------------- optimisation
    def exempt_from_weight_decay(self) -> None:
        """Mark what weight decay must not pull to zero: ESPnet's ``exclude_weight_decay`` exempts biases,
        nn.Embedding and LayerNorm-family weights; this adds the other trainable vectors (tanh gates, RMSNorm
        weights) and the task-token rows of the input and output layers (peft's, no nn.Embedding)."""
        for name, p in self.named_parameters():
            if p.requires_grad and (p.ndim < 2 or "trainable_tokens" in name):
                p._no_weight_decay = True  # read by espnet2.optimizers.optim_groups

    # ---------------------------------------------------------------- checkpoints
    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        """With save_trainable_only, only what training changes: LoRA, adapter or cross-attention, task tokens.

        ESPnet's trainer saves model.state_dict() each epoch; for ChatGLM3-6B the full one is 12 GB.
        """
        state = super().state_dict(*args, **kwargs)
        if not self.save_trainable_only:
            return state
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        keep = {prefix + n for n in self.trainable_names()}
        return type(state)((k, v) for k, v in state.items() if k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load over the base models: frozen weights may be absent, every trainable one must be there."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            missing = sorted(set(result.missing_keys) & self.trainable_names())
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"checkpoint does not fit the model: missing trainable {missing[:5]}"
                    f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
                )
        return result
