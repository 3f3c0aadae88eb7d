"""Steering variants and hyperprior priors: what each costs in the header and saves in the text.

    python benchmarks/steering.py ../shared/corpus/enwik5 --steer-steps 100

Table 1 (variants): none, a fixed text, static random vectors and trained vectors, each with
its header bytes, text bytes, the total archive and the gain over none. Table 2 (priors): the
trained vectors, trained once, coded under each prior: bits used, bits and entropy per
coordinate, MSE, the text they give and the total archive. Every archive is decoded and
compared (skip with --no-verify). Training time is reported apart from coding time.
Results go to benchmarks/results/steering_<file>_<bytes>[_<non-default setting>...].json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine, markdown_table, save

from llmzip import Compressor, load_model
from llmzip.levels import FASTEST, LEVELS
from llmzip.steering import hyperprior, training
from llmzip.steering.soft_prompt import Steering, TrainOptions

VARIANT_COLUMNS = ["steering", "header_steering_bytes", "text_bytes", "archive_bytes", "text_ratio", "total_ratio",
                   "gain_vs_none_bytes", "train_seconds", "coding_seconds"]  # fmt: skip
PRIOR_COLUMNS = ["prior", "bits_used", "bits_per_coord", "entropy_per_coord", "total_entropy_bits", "mse",
                 "steering_ratio", "text_bits", "text_ratio", "archive_bytes", "gain_vs_none_bytes"]  # fmt: skip


def run(compressor: Compressor, data: bytes, verify: bool, steer: Steering | None = None) -> dict[str, object]:
    archive = compressor.compress(data, steer=steer)
    s = compressor.stats
    if verify:
        assert compressor.decompress(archive) == data, f"round trip failed for {s.steering}"
    return {
        "steering": s.steering,
        "header_steering_bytes": s.steering_bytes,
        "text_bytes": s.payload_bytes,
        "archive_bytes": len(archive),
        "text_ratio": round(s.payload_bytes / len(data), 5),  # compressed / original bits, text only
        "total_ratio": round(len(archive) / len(data), 5),  # header included
        "bits_per_byte": round(8 * len(archive) / len(data), 4),
        "coding_seconds": round(s.seconds - s.steering_seconds, 1),
        "verified": verify,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bytes", type=int, default=None, help="use only this prefix of the file")
    parser.add_argument("--chunk-size", type=int, default=LEVELS[FASTEST].chunk_size)
    parser.add_argument("--variants", default="none,text:This is Wikipedia html,random:1")
    parser.add_argument("--vectors", type=int, default=1, help="N of trained:N")
    parser.add_argument("--priors", default=",".join(hyperprior.PRIORS))
    parser.add_argument("--bins", type=int, default=hyperprior.DEFAULT_BINS)
    defaults = TrainOptions()
    parser.add_argument("--steer-steps", type=int, default=defaults.steps)
    parser.add_argument("--steer-lr", type=float, default=defaults.lr)
    parser.add_argument("--steer-chunks", type=int, default=defaults.chunks)
    parser.add_argument("--steer-tokens", type=int, default=defaults.tokens)
    parser.add_argument("--no-verify", action="store_true", help="skip decoding each archive")
    args = parser.parse_args()
    data = args.file.read_bytes()[: args.bytes]
    loaded = load_model(args.model)
    options = TrainOptions(steps=args.steer_steps, lr=args.steer_lr, chunks=args.steer_chunks, tokens=args.steer_tokens)
    verify = not args.no_verify

    variants = []
    for spec in filter(None, args.variants.split(",")):  # "" runs no variant beside the trained one
        compressor = Compressor(loaded, chunk_size=args.chunk_size, steer=spec)
        variants.append(run(compressor, data, verify) | {"train_seconds": 0.0})
        print(json.dumps(variants[-1]), flush=True)

    compressor = Compressor(loaded, chunk_size=args.chunk_size)
    ids = loaded.tokenizer.encode(data)
    chunks = [ids[i : i + args.chunk_size] for i in range(0, len(ids), args.chunk_size)]
    losses: list[float] = []
    started = time.perf_counter()
    vectors = training.train(loaded.model, loaded.tokenizer, chunks, args.vectors, options,
                             compressor.precision == "bf16", losses.append)  # fmt: skip
    train_seconds = round(time.perf_counter() - started, 1)
    print(f"trained {args.vectors} vectors in {train_seconds} s, loss {losses[0]:.4f} -> {losses[-1]:.4f} nats/token")
    priors = []
    for prior in args.priors.split(","):
        coded = hyperprior.encode(vectors, prior, args.bins)
        result = run(compressor, data, verify, Steering("trained", count=args.vectors, coded=coded))
        n = coded.values.size
        priors.append(
            result
            | {
                "prior": prior,
                "bits_used": coded.bits,
                "bits_per_coord": round(coded.bits / n, 3),
                "entropy_per_coord": round(coded.entropy_bits / n, 3),
                "total_entropy_bits": round(coded.entropy_bits),
                "mse": f"{coded.mse:.3g}",
                "steering_ratio": round(coded.bits / n / 32, 4),  # vs float32 coordinates
                "text_bits": 8 * result["text_bytes"],
                "train_seconds": train_seconds,
            }
        )
        print(json.dumps(priors[-1]), flush=True)
    best = min(priors, key=lambda r: r["archive_bytes"])
    variants.append(best | {"steering": f"{best['steering']} ({best['prior']})"})
    none = next((v["archive_bytes"] for v in variants if v["steering"] == "none"), None)
    for row in variants + priors:
        row["gain_vs_none_bytes"] = none - row["archive_bytes"] if none is not None else ""

    report = {
        "machine": machine(),
        "model": args.model,
        "file": str(args.file),
        "bytes": len(data),
        "chunk_size": args.chunk_size,
        "training": vars(options)
        | {"bins": args.bins, "vectors": args.vectors, "seconds": train_seconds, "losses": losses},
        "variants": variants,
        "priors": priors,
    }
    settings = {"chunks": args.steer_chunks, "tokens": args.steer_tokens, "steps": args.steer_steps,
                "lr": args.steer_lr, "bins": args.bins}  # fmt: skip
    usual = vars(defaults) | {"bins": hyperprior.DEFAULT_BINS}
    suffix = "".join(f"_{name}{value}" for name, value in settings.items() if value != usual[name])
    save(f"steering_{args.file.name}_{len(data)}{suffix}.json", report)
    print(f"\n{args.file.name}, {len(data)} bytes, {args.model}, chunks of {args.chunk_size} tokens\n")
    print(markdown_table(variants, VARIANT_COLUMNS) + "\n\n" + markdown_table(priors, PRIOR_COLUMNS))


if __name__ == "__main__":
    main()
