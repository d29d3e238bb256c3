"""RESULTS.md's "The paper's claims, checked": each claim of the paper that the runs can test, its measurement
on the held-out sets, and whether it holds here.

A claim about CER or NER F1 is a difference of corpus-level scores between runs decoded on the same set. It
comes with a paired bootstrap 95 % interval (bootstrap.py) over the set's utterances, from the per-utterance
counts the scorers wrote: score_cer/result.txt (every reference utterance, a missing hypothesis all deleted)
and score_ner/utterances.json. It holds when the interval lies on the claim's side of 0, does not hold when it
lies on the other side, and is not significant when it contains 0. The Figure 2 claims are one measurement of
one trained model per run: they have no interval.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from espnet_llm.scoring.bootstrap import Interval, paired_bootstrap
from espnet_llm.scoring.cer import read_utterance_counts

if TYPE_CHECKING:
    from espnet_llm.scoring.results import Run

CLAIM_SETS = ("test", "dev")  # held out from training; test is the paper's
DECODER_ONLY, ENCODER_DECODER = "decoder_only", "encoder_decoder"
BASELINE = "conformer/asr"  # ESPnet's Conformer, entity-aware (trained on the marked text)
PHASES = ("short", "long", "cot")
SWEEP_HINT = 'run.sh --history_sweep "0 1 2 3 4" (docs/speech_llms.md: "The history sweep")'


class NotMeasured(Exception):
    """What a measurement lacks: a run, a scored set, per-utterance counts."""


@dataclass(frozen=True)
class Claim:
    claim: str
    measure: str  # what is measured here
    measured: str  # the figures, "-" where none
    verdict: str


def _run(runs: dict[str, Run], name: str) -> Run:
    if name not in runs:
        raise NotMeasured(f"no run {name}")
    return runs[name]


def cer_counts(run: Run, dset: str) -> dict[str, tuple[int, int]]:
    """utterance -> (errors, reference characters) of a run's scored decoding of a set."""
    if dset not in run.cer:
        raise NotMeasured(f"{run.name} has no scored {dset}")
    result_txt = run.decode_dir(dset) / "score_cer" / "result.txt"
    counts = {u: (s + d + i, c + s + d) for u, (c, s, d, i) in read_utterance_counts(result_txt).items()}
    # utterances missing from result.txt would silently drop out of the resampled set
    total = run.cer[dset].counts
    if (sum(e for e, _ in counts.values()), sum(r for _, r in counts.values())) != (total.errors, total.words):
        raise NotMeasured(f"the utterances of {run.decode_dir(dset)}/score_cer/result.txt do not add up to its "
                          "result.json")
    return counts


def cer_combination(terms: list[tuple[Run, int]], dset: str) -> Interval:
    """sum of weight * CER (points) over the runs, e.g. [(a, 1), (b, -1)]: CER_a - CER_b, and its interval."""
    per_run = [cer_counts(run, dset) for run, _ in terms]
    refs = {u: r for u, (_, r) in per_run[0].items()}
    if any({u: r for u, (_, r) in counts.items()} != refs for counts in per_run[1:]):
        raise NotMeasured(f"{', '.join(run.name for run, _ in terms)} were not scored on the same {dset} reference")
    if not sum(refs.values()):
        raise NotMeasured(f"the {dset} reference is empty")
    utts = sorted(refs)
    columns = [[refs[u]] + [counts[u][0] for counts in per_run] for u in utts]
    weights = np.array([w for _, w in terms])
    return paired_bootstrap(columns, lambda sums: 100 * float(weights @ sums[1:]) / sums[0])


def ner_counts(run: Run, dset: str) -> dict[str, tuple[int, int, int]]:
    """utterance -> (correct, hypothesis, reference) entities of a run's scored decoding of a set."""
    path = run.decode_dir(dset) / "score_ner" / "utterances.json"
    if not path.exists():
        raise NotMeasured(f"{run.name} has no {run.decoding}/{dset}/score_ner/utterances.json")
    return {u: (c["correct"], c["hyp"], c["ref"]) for u, c in json.loads(path.read_text(encoding="utf-8")).items()}


def f1(correct: int, hyp: int, ref: int) -> float:
    """Micro F1 in %: 2 TP / (hypothesis + reference entities) is ner.py's harmonic mean of P and R, 0 without TP."""
    return 200 * correct / (hyp + ref) if hyp + ref else 0.0


def f1_difference(a: Run, b: Run, dset: str) -> Interval:
    """F1_a - F1_b (points) and its interval."""
    counts_a, counts_b = ner_counts(a, dset), ner_counts(b, dset)
    if counts_a.keys() != counts_b.keys():
        raise NotMeasured(f"{a.name} and {b.name} were not scored on the same {dset} utterances")
    columns = [counts_a[u] + counts_b[u] for u in sorted(counts_a)]
    return paired_bootstrap(columns, lambda sums: f1(*sums[:3]) - f1(*sums[3:]))


def verdict(interval: Interval, sign: int) -> str:
    """``sign``: +1 where the claim is that the difference is above 0, -1 below."""
    if interval.low <= 0 <= interval.high:
        return "not significant"
    return "holds" if (interval.low > 0) == (sign > 0) else "does not hold"


def bootstrapped(claim: str, measure: str, sign: int, measure_on: Callable[[str], Interval]) -> Claim:
    """A difference measured on each held-out set: estimate [95 % interval], and its verdict per set."""
    measured, verdicts, why_not = [], [], {}
    for dset in CLAIM_SETS:
        try:
            interval = measure_on(dset)
        except NotMeasured as why:
            why_not[dset] = str(why)
            continue
        measured.append(f"{dset} {interval.estimate:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]")
        verdicts.append(f"{dset}: {verdict(interval, sign)}")
    if not measured:
        return Claim(claim, measure, "-", "not measured: " + "; ".join(dict.fromkeys(why_not.values())))
    verdicts += [f"{dset}: not measured ({why})" for dset, why in why_not.items()]
    return Claim(claim, measure, "<br>".join(measured), "<br>".join(verdicts))


def cer_claims(runs: dict[str, Run]) -> list[Claim]:
    def cer(*terms: tuple[str, int]) -> Callable[[str], Interval]:
        return lambda dset: cer_combination([(_run(runs, name), w) for name, w in terms], dset)

    do, ed = DECODER_ONLY, ENCODER_DECODER
    claims = [bootstrapped("The encoder-decoder's short-form CER is lower than the decoder-only's",
                           f"CER {ed}/short − {do}/short, points", -1, cer((f"{ed}/short", 1), (f"{do}/short", -1)))]
    for system in (do, ed):
        claims.append(bootstrapped(f"Long form (with history) has a lower CER than short form: {system}",
                                   f"CER {system}/long − {system}/short, points", -1,
                                   cer((f"{system}/long", 1), (f"{system}/short", -1))))
    claims.append(bootstrapped(
        "The decoder-only model gains more CER from history than the encoder-decoder",
        f"({do}/short − {do}/long) − ({ed}/short − {ed}/long), CER points", 1,
        cer((f"{do}/short", 1), (f"{do}/long", -1), (f"{ed}/short", -1), (f"{ed}/long", 1))))
    for name in (f"{system}/{phase}" for system in (do, ed) for phase in PHASES):
        claims.append(bootstrapped(f"A speech LLM transcribes better than the Conformer baseline: {name}",
                                   f"CER {name} − {BASELINE}, points", -1, cer((name, 1), (BASELINE, -1))))
    return claims


def cot_claims(runs: dict[str, Run]) -> list[Claim]:
    claims = []
    for system in (DECODER_ONLY, ENCODER_DECODER):
        claim = f"CoT NER F1 rises with the history K up to K = 2: {system}"
        measure = f"micro F1 {system}/cot_k2 − {system}/cot_k0, points"
        low, high = f"{system}/cot_k0", f"{system}/cot_k2"
        if low not in runs or high not in runs:
            why = f"not measured: no history-sweep runs {low} and {high}: {SWEEP_HINT}"
            claims.append(Claim(claim, measure, "-", why))
            continue
        claims.append(bootstrapped(claim, measure, 1, lambda dset: f1_difference(runs[high], runs[low], dset)))
    for system in (DECODER_ONLY, ENCODER_DECODER):
        name = f"{system}/cot"
        claims.append(bootstrapped(
            f"With CoT, a speech LLM finds entities better than the entity-aware Conformer: {name}",
            f"micro F1 {name} − {BASELINE}, points", 1,
            lambda dset, name=name: f1_difference(_run(runs, name), _run(runs, BASELINE), dset)))
    return claims


def trend(values: list[float]) -> str:
    """Whether a series (in order of K) falls."""
    if all(b < a for a, b in zip(values, values[1:])):
        return "holds"
    return "holds from the least K to the most, not at every step" if values[-1] < values[0] else "does not hold"


def attention_claim(points: list[tuple[Run, str, int]], attention: dict[str, dict]) -> Claim:
    claim = "The decoder-only model's attention share on speech falls as K grows (Figure 2b)"
    measure = (f"speech_attention.json of the history-sweep runs `{DECODER_ONLY}/<phase>_k<K>`: the current "
               "utterance's attention share on the prompt's speech, mean over layers, teacher-forced on the set "
               "named; no interval (one measurement of one model per K)")
    series: dict[str, list[tuple[int, float, str]]] = {}  # phase -> (K, share, set)
    for run, phase, k in points:
        if run.system == DECODER_ONLY and run.name in attention:
            data = attention[run.name]
            series.setdefault(phase, []).append((k, float(np.mean(data["share"])), data["set"]))
    series = {phase: sorted(line) for phase, line in series.items() if len(line) >= 2}
    if not series:
        return Claim(claim, measure, "-", f"not measured: no history-sweep runs of {DECODER_ONLY} with "
                     f"speech_attention.json at two K or more: {SWEEP_HINT}")
    measured = [f"{phase} ({line[0][2]}): " + ", ".join(f"K={k} {share:.3f}" for k, share, _ in line)
                for phase, line in series.items()]
    verdicts = [f"{phase}: {trend([share for _, share, _ in line])}" for phase, line in series.items()]
    return Claim(claim, measure, "<br>".join(measured), "<br>".join(verdicts))


def gate_claim(runs: list[Run], sweep_runs: set[str], gates: dict[str, dict]) -> Claim:
    claim = "Deeper cross-attention gates are larger than shallower ones (Figure 2a)"
    measure = (f"gate_values.json of each {ENCODER_DECODER} run (not the sweep's): mean abs(tanh(gate)) of the deeper "
               "half of its gated layers − of the shallower half; no interval (one trained model per run)")
    measured, deeper_larger, too_few = [], [], []
    for run in runs:
        if run.system != ENCODER_DECODER or run.name in sweep_runs or run.name not in gates:
            continue
        by_layer = sorted(zip(gates[run.name]["layers"], gates[run.name]["gates"]))
        sizes = [abs(g) for _, g in by_layer]  # a negative gate lets the speech in as much as a positive one
        half = len(sizes) // 2  # of an odd number, the middle layer is in neither half
        if not half:
            too_few.append(f"{run.name} has {len(sizes)} gated block(s), fewer than two")
            continue
        difference = float(np.mean(sizes[-half:]) - np.mean(sizes[:half]))
        measured.append(f"{run.name} {difference:+.3f}")
        deeper_larger.append(difference > 0)
    if not measured:
        why = "; ".join(too_few) if too_few else f"no {ENCODER_DECODER} run with gate_values.json"
        return Claim(claim, measure, "-", f"not measured: {why}")
    if all(deeper_larger):
        outcome = "holds"
    elif not any(deeper_larger):
        outcome = "does not hold"
    else:
        outcome = f"holds in {sum(deeper_larger)} of {len(deeper_larger)} runs"
    return Claim(claim, measure, "<br>".join(measured + [f"not measured: {why}" for why in too_few]), outcome)


def claim_rows(runs: list[Run], points: list[tuple[Run, str, int]], gates: dict[str, dict],
               attention: dict[str, dict]) -> list[Claim]:
    """Every claim checked. ``points``: the history sweep's (run, phase, K); ``gates`` and ``attention``: run name
    -> its gate_values.json and speech_attention.json, where it has one."""
    by_name = {run.name: run for run in runs}
    return (cer_claims(by_name) + cot_claims(by_name) + [attention_claim(points, attention)]
            + [gate_claim(runs, {run.name for run, _, _ in points}, gates)])


def claims_table(claims: list[Claim]) -> str:
    lines = ["|claim (paper)|measured as|here: estimate [95 % interval]|holds here?|", "|---|---|---|---|"]
    lines += [f"|{c.claim}|{c.measure}|{c.measured}|{c.verdict}|" for c in claims]
    return "\n".join(lines)
