"""How many tokens a decoding step could settle if it scored drafted tokens in one forward and kept
them up to the first wrong one (the exact forward gives a position the same bits whichever other
positions it computes): tokens per forward on each file's first bytes, for two drafters.

- lookup: llmzip's decoder's drafter (llmzip/drafts.py), the continuation of the longest earlier
  occurrence (4 to 6 tokens) of the row's last tokens in its own history ("prompt lookup"), and
  the same from matches of 2 tokens on; with the share of drafted forwards whose drafts all
  failed (a forward's cost for nothing);
- model top-1 (a bound): the drafts a drafter as good as the model itself would make, the
  model's most probable next tokens; its run of hits is the run of positions whose most probable
  token is the one that follows (teacher-forced, exact predictor). No cheaper drafter does better.

    python benchmarks/drafts.py alice29.txt paper1 Apache_2k.log --bytes 1000 4000 --drafts 8
"""

from __future__ import annotations

import argparse

import numpy as np
from common import load_input, machine, save

from llmzip import Compressor
from llmzip.aliases import DEFAULT_MODEL
from llmzip.drafts import SHORTEST, Lookup
from llmzip.predictor import ExactPredictor


def lookup_steps(ids: np.ndarray, drafts: int, shortest: int) -> tuple[int, int, int]:
    """A decoder drafting by lookup (llmzip.drafts.Lookup, matches of `shortest` tokens or more)
    over `ids`: its forwards (each settles 1 + the drafts kept), those that had drafts, and those
    whose drafts all failed."""
    lookup = Lookup([ids], shortest)  # it reads a row's tokens before t only: the whole row may be given
    t, forwards, drafted, failed = 1, 0, 0, 0
    while t < len(ids):
        draft = lookup.draft(0, t, drafts)
        kept = 0
        while kept < len(draft) and t + kept < len(ids) and draft[kept] == ids[t + kept]:
            kept += 1
        t, forwards = t + kept + 1, forwards + 1
        drafted, failed = drafted + (len(draft) > 0), failed + (len(draft) > 0 and kept == 0)
    return forwards, drafted, failed


def top1_steps(hits: np.ndarray, drafts: int) -> int:
    """Forwards with drafts as good as the model's top-1: from t, the step settles t and every
    following position whose top-1 was right, up to `drafts` more."""
    t, forwards = 0, 0
    while t < len(hits):
        kept = 0
        while kept < drafts and t + 1 + kept < len(hits) and hits[t + kept]:
            kept += 1
        t, forwards = t + kept + 1, forwards + 1
    return forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files, or files of the corpus folder")
    parser.add_argument("--bytes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--drafts", type=int, default=8, help="most drafted tokens a forward scores")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    compressor = Compressor(args.model)
    model, tokenizer = compressor.coder.prepare(), compressor.model.tokenizer
    rows = []
    for spec in args.inputs:
        for nbytes in args.bytes:
            name, data = load_input(spec, nbytes)
            ids = tokenizer.encode(data)
            predictor = ExactPredictor(model, tokenizer.alphabet_size)
            inputs = np.concatenate([[tokenizer.roles.start_id], tokenizer.roles.model_inputs(ids[:-1])])
            predictor.start(1, len(ids))
            top = np.concatenate([w[0].argmax(-1) for w in predictor.forced(inputs[None])])
            hits = top == ids
            row = {
                "file": name,
                "bytes": len(data),
                "tokens": len(ids),
                "top1_accuracy": round(float(hits.mean()), 3),
                "top1_tokens_per_forward": round(len(ids) / top1_steps(hits, args.drafts), 2),
            }
            for shortest in (2, SHORTEST):  # every match, and those the decoder drafts from
                forwards, drafted, failed = lookup_steps(ids, args.drafts, shortest)
                row[f"lookup{shortest}_tokens_per_forward"] = round(len(ids) / forwards, 2)
                row[f"lookup{shortest}_failed_share"] = round(failed / max(drafted, 1), 2)
            print(row, flush=True)
            rows.append(row)
    report = {"machine": machine(), "model": args.model, "drafts": args.drafts, "rows": rows}
    print(save("drafts.json", report))


if __name__ == "__main__":
    main()
