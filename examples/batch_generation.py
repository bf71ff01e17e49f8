"""Batched record generation with resume, in the style of a synthetic-data generator.

Generates ``--num-records`` records in batches of ``--buffer-size``, one JSONL file per
batch (``batches/batch_00000.jsonl``...), and records each batch complete in a resumelog
checkpoint right after its file is written. It shows the behaviour of NeMo
DataDesigner's ``create(..., resume=True)`` on top of resumelog:

* ``--resume`` continues from the last completed batch (completed batches are skipped);
* the run's parameters are the checkpoint's *fingerprint*: resuming with a different
  ``--num-records`` or ``--buffer-size`` (or ``--seed``) is refused with a clear error
  naming each changed field (``resumelog.FingerprintMismatch``), exit code 2;
* ``--resume`` of a dataset that is already complete logs a warning and returns;
* ``--resume`` without a checkpoint starts a fresh dataset;
* a crash *between writing a batch file and recording it* is reconciled: on resume
  the file exists but the batch is not recorded, so the file is verified (its footer
  holds the row count and a SHA-256 of the rows) and accepted if it is intact, or the
  batch is regenerated and the file overwritten if not. Batch files are named by batch
  index and replaced atomically, so a batch is never duplicated;
* without ``--resume`` an existing dataset is never touched (``--overwrite`` starts over).

``--crash-after-write K`` simulates the crash window: the process exits with
``os._exit(3)`` right after writing batch ``K``'s file, before recording it.

Usage::

    python examples/batch_generation.py --out /tmp/gen --num-records 1000 --buffer-size 100 --crash-after-write 4
    python examples/batch_generation.py --out /tmp/gen --num-records 1000 --buffer-size 100 --resume
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import resumelog

logger = logging.getLogger("batch_generation")

FOOTER = "__footer__"


def batch_sizes(num_records: int, buffer_size: int) -> list[int]:
    """Rows per batch: ``buffer_size`` each, the last one the remainder."""
    full, rest = divmod(num_records, buffer_size)
    return [buffer_size] * full + ([rest] if rest else [])


def batch_id(idx: int) -> str:
    """The source id of batch ``idx`` in the checkpoint."""
    return f"batch-{idx:05d}"


def batch_path(out: Path, idx: int) -> Path:
    """The file of batch ``idx``."""
    return out / "batches" / f"batch_{idx:05d}.jsonl"


def generate(idx: int, first_id: int, n: int, seed: int) -> list[dict[str, Any]]:
    """Generate batch ``idx``: ``n`` records with ids ``first_id...`` (deterministic)."""
    rng = random.Random(f"{seed}:{idx}")
    topics = ["weather", "sports", "cooking", "travel", "music"]
    return [
        {"id": first_id + k, "topic": rng.choice(topics), "score": round(rng.random(), 4), "batch": idx}
        for k in range(n)
    ]


def encode_batch(records: list[dict[str, Any]]) -> bytes:
    """JSONL rows followed by a footer line with the row count and their SHA-256."""
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    footer = json.dumps({FOOTER: {"rows": len(records), "sha256": hashlib.sha256(body).hexdigest()}})
    return body + footer.encode() + b"\n"


def write_batch(path: Path, data: bytes) -> None:
    """Write atomically: a crash leaves the old file or the new one, never a mix; overwrites."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify_batch(path: Path, first_id: int, n: int) -> str | None:
    """Return ``None`` if ``path`` is an intact batch of ``n`` rows starting at ``first_id``,
    else the reason it is not."""
    try:
        data = path.read_bytes()
        body, _, footer_line = data.rstrip(b"\n").rpartition(b"\n")
        body += b"\n" if body else b""
        footer = json.loads(footer_line)[FOOTER]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no valid footer ({type(exc).__name__})"
    if footer.get("rows") != n:
        return f"footer says {footer.get('rows')} rows, expected {n}"
    if hashlib.sha256(body).hexdigest() != footer.get("sha256"):
        return "checksum mismatch"
    ids = [json.loads(line)["id"] for line in body.splitlines()]
    if ids != list(range(first_id, first_id + n)):
        return "unexpected record ids"
    return None


def open_checkpoint(args: argparse.Namespace, fingerprint: dict[str, int]) -> resumelog.Checkpoint | None:
    """Open the checkpoint as ``--resume`` / ``--overwrite`` ask; ``None`` means refuse."""
    path = str(args.out / "checkpoint")
    try:
        existing: resumelog.Checkpoint | None = resumelog.open(path, create=False)
    except resumelog.ObjectNotFound:
        existing = None
    if existing is None:
        if args.resume:
            logger.info("no checkpoint in %s: nothing to resume, starting a new dataset", args.out)
            print("no checkpoint found: starting a new dataset")
        return resumelog.open(path, fingerprint=fingerprint)
    if args.resume:
        return resumelog.open(path, fingerprint=fingerprint)  # FingerprintMismatch if parameters changed
    if not args.overwrite:
        print(
            f"error: {args.out} already holds a dataset; pass --resume to continue it or --overwrite to start over",
            file=sys.stderr,
        )
        return None
    existing.clear()
    for p in (args.out / "batches").glob("batch_*.jsonl"):
        p.unlink()
    print("--overwrite: previous dataset and checkpoint deleted")
    return resumelog.open(path, fingerprint=fingerprint)


def main(argv: list[str] | None = None) -> int:
    """Generate (or resume) the dataset; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="dataset directory (default: a new temporary one)")
    ap.add_argument("--num-records", type=int, default=100)
    ap.add_argument("--buffer-size", type=int, default=25, help="records per batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run")
    ap.add_argument("--overwrite", action="store_true", help="delete an existing dataset and start over")
    ap.add_argument(
        "--crash-after-write", type=int, default=None, metavar="K", help="os._exit(3) after writing batch K"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.num_records < 1 or args.buffer_size < 1:
        ap.error("--num-records and --buffer-size must be positive")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="resumelog-gen-"))
    args.out.mkdir(parents=True, exist_ok=True)

    fingerprint = {"num_records": args.num_records, "buffer_size": args.buffer_size, "seed": args.seed}
    try:
        ckpt = open_checkpoint(args, fingerprint)
    except resumelog.FingerprintMismatch as exc:
        changed = ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in sorted(exc.differences.items()))
        print(
            f"error: cannot resume: the run's parameters changed ({changed}); resume with the original "
            "parameters, or pass --overwrite instead of --resume to start a new dataset",
            file=sys.stderr,
        )
        return 2
    if ckpt is None:
        return 2

    sizes = batch_sizes(args.num_records, args.buffer_size)
    firsts = [sum(sizes[:i]) for i in range(len(sizes))]
    ids = [batch_id(i) for i in range(len(sizes))]
    index = {bid: i for i, bid in enumerate(ids)}
    todo = ckpt.pending(ids)
    done = len(ids) - len(todo)
    if not todo:
        logger.warning(
            "dataset in %s is already complete (%d records, %d batches); nothing to do",
            args.out,
            args.num_records,
            len(ids),
        )
        print(f"skipped {done} of {len(ids)} batches: already complete")
        return 0
    if done:
        print(f"resuming: skipped {done} of {len(ids)} batches already complete, continuing at batch {index[todo[0]]}")

    generated = accepted = redone = 0
    with ckpt.writer() as w:
        for bid in todo:
            idx = index[bid]
            path = batch_path(args.out, idx)
            if path.exists():  # written, but the crash came before it was recorded
                problem = verify_batch(path, firsts[idx], sizes[idx])
                if problem is None:
                    print(
                        f"batch {idx}: file written before the crash verified ({sizes[idx]} rows, checksum ok): accepted"
                    )
                    w.complete(bid)
                    w.flush()
                    accepted += 1
                    continue
                print(f"batch {idx}: file written before the crash failed verification ({problem}): regenerating")
                redone += 1
            write_batch(path, encode_batch(generate(idx, firsts[idx], sizes[idx], args.seed)))
            if args.crash_after_write == idx:
                print(f"simulated crash after writing batch {idx}, before recording it", flush=True)
                os._exit(3)
            w.complete(bid)
            w.flush()  # one small durable record per batch: "continue from the last completed batch"
            generated += 1

    rows = 0
    seen: set[int] = set()
    for idx in range(len(sizes)):  # check the whole dataset: every row once
        body = batch_path(args.out, idx).read_text().splitlines()[:-1]
        rows += len(body)
        seen.update(json.loads(line)["id"] for line in body)
    ids_seen = len(seen)
    print(f"generated {generated} batches, accepted {accepted} written before a crash, regenerated {redone}")
    print(f"dataset complete: {rows} records ({ids_seen} distinct ids) in {len(sizes)} batch files")
    return 0 if rows == ids_seen == args.num_records else 1


if __name__ == "__main__":
    sys.exit(main())
