"""Mutation check of the property suite: plant known bugs, show the suite finds each.

Usage::

    python property_tests/mutants.py                 # every mutant, table at the end
    python property_tests/mutants.py --only gc_deletes_uncovered_segments --show

For each mutant this copies ``src/resumelog``, ``property_tests`` and
``pyproject.toml`` into a temporary directory, applies one exact text replacement to
the copied library (the replaced text must occur exactly once; a mutant of the compiled
kernels, ``_native.c``, is then compiled into the copy by ``hatch_build.compile_native``,
as ``pip install -e .`` compiles it, and its suite runs with ``RESUMELOG_NATIVE=1``; one
that does not compile is reported *not built*, never killed), and runs::

    python -m pytest property_tests -x -q -p no:cacheprovider -m "not known_bug" -n 0

there, with ``PYTHONPATH`` pointing at the mutated copy first and
``HYPOTHESIS_PROFILE=ci`` (derandomized, no example database). The repository is
never modified. Mutants run ``--jobs`` at a time (default 2), each on one core
(``-n 0``); the whole table (90 mutants) takes 27-37 minutes on 2 cores. Tests marked ``known_bug`` (real bugs reported to the lead, failing
until fixed) are deselected so they do not count as kills. The unmutated copy runs
first and must pass. A mutant is *killed* if pytest fails; the table names the first
failing test and its assertion. ``--show`` prints the full output (with the shrunk
falsifying example); ``--logs DIR`` keeps every run's output.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to src/resumelog
    old: str
    new: str
    what: str


MUTANTS = [
    Mutant(
        "emission_not_required_in_complete",
        "algebra.py",
        "return self.emitted and not self.tainted and self.sums() == (0, 0)",
        "return not self.tainted and self.sums() == (0, 0)",
        "SourceRunState.complete drops the emission requirement",
    ),
    Mutant(
        "emission_not_required_in_fold",
        "algebra.py",
        "            if not s.emitted or s.tainted:\n                return\n            run, src = k",
        "            if s.tainted:\n                return\n            run, src = k",
        "FoldState.finish completes sources that were never emitted",
    ),
    Mutant(
        "conflict_resolved_by_arrival_order",
        "algebra.py",
        "                entries[key] = {e[0]: (e[1], e[2]), stream: (ordinal, delta)}\n                self.multi = True",
        "                entries[key] = (stream, ordinal, delta)  # last arrival wins across streams",
        "a cross-stream conflict is resolved by arrival order",
    ),
    Mutant(
        "duplicate_keys_across_streams_counted_twice",
        "algebra.py",
        "    for _, d in it:\n        if d != first:\n            return _CONFLICT\n    return first",
        "    n = 1\n    for _, d in it:\n        if d != first:\n            return _CONFLICT\n        n += 1\n    return first * n",
        "a key written by several streams counts once per stream",
    ),
    Mutant(
        "rewrite_sums_deltas",
        "algebra.py",
        "                if ordinal > e[1]:\n                    entries[key] = (stream, ordinal, delta)",
        "                if ordinal > e[1]:\n                    entries[key] = (stream, ordinal, e[2] + delta)",
        "a key written twice by one stream sums the deltas instead of replacing",
    ),
    Mutant(
        "compaction_overwrites_snapshot",
        "compactor.py",
        "            else:\n                store.delete(new_layers)  # no snapshot names them (gc would collect them too)\n"
        "                if number in loaded.foreign_snapshots:\n"
        "                    _collect_foreign_snapshot(store, key, epoch)\n"
        "                del encoded, loaded, state  # the temporary files of spooled layers go now\n"
        "                continue  # another compactor published `number` first: reload",
        "            else:\n                store.delete([key])  # overwrite instead of put-if-absent\n"
        "                store.put_if_absent(key, data)",
        "compaction overwrites a snapshot another compactor published",
    ),
    Mutant(
        "gc_deletes_uncovered_segments",
        "compactor.py",
        "            if seq > hwm or (seq == last and not closed):",
        "            if seq == last and not closed:",
        "GC deletes segments the retained snapshot does not cover",
    ),
    Mutant(
        "torn_middle_segment_treated_as_tail",
        "compactor.py",
        "                if isinstance(exc, TornSegment) and store.torn_writes_possible and last_of[key]:",
        "                if isinstance(exc, TornSegment) and store.torn_writes_possible:",
        "a torn segment that is not the stream's last is skipped as a torn tail",
    ),
    Mutant(
        "no_second_listing",
        "compactor.py",
        "    loaded.streams_relisted = _fold_latecomers(store, loaded)\n    state.finish(writers=loaded.for_compaction)",
        "    state.finish(writers=loaded.for_compaction)",
        "the fold trusts one journal listing (no latecomer pass)",
    ),
    Mutant(
        "failed_flush_drops_buffer",
        "journal.py",
        '        except Exception as exc:\n            msg = f"flush of',
        '        except Exception as exc:\n            self._pending = None\n            msg = f"flush of',
        "a failed flush forgets the records it could not write",
    ),
    Mutant(
        "late_record_keeps_completion",
        "algebra.py",
        "        if old == delta:\n            self._add_writer(source, entries, key, stream)\n            return None",
        "        if True:\n            return None",
        "a late record for a completed source (a fan-out +k after a snapshot) is ignored",
    ),
    Mutant(
        "second_run_state_dropped",
        "algebra.py",
        "                if run >= holder:\n                    return",
        "                if run >= holder:\n                    del pending[k]\n                    return",
        "a run draining a source another run completed drops its state (lost if that completion is voided)",
    ),
    # issue 16: each fix reverted
    Mutant(
        "reader_trusts_journal_listing",
        "compactor.py",
        "    loaded.journal = listing\n    _check_base_still_listed(store, loaded)\n",
        "    loaded.journal = listing\n",
        "r1: a reader does not check that its snapshot is still listed after its journal listing",
    ),
    Mutant(
        "gc_deletes_segments_before_snapshots",
        "compactor.py",
        "            for group in (doomed[: result.snapshots], doomed[result.snapshots : cut], doomed[cut:]):",
        "            for group in (doomed[cut:], doomed[: result.snapshots], doomed[result.snapshots : cut]):",
        "r1: GC deletes segments before the old snapshots (a reader's check can pass mid-GC)",
    ),
    Mutant(
        "quarantine_keeps_round_completions",
        "algebra.py",
        "        if self.provisional:\n            # Completions an earlier round",
        "        if False:\n            # Completions an earlier round",
        "r2: a run quarantined late in a fold keeps the completions of earlier rounds",
    ),
    Mutant(
        "stream_ids_never_pruned",
        "snapshot.py",
        "    stream_ids: list[str] = []\n    renumber: dict[int, int] = {}\n",
        "    stream_ids: list[str] = list(state.stream_ids)\n    renumber: dict[int, int] = {i: i for i in range(len(stream_ids))}\n",
        "r3: a snapshot keeps every stream id ever folded",
    ),
    Mutant(
        "deferred_crc_failure_wedges",
        "compactor.py",
        "        if number and exc.path in names:\n            raise _BadBase(number, exc.path) from exc",
        "        if False:\n            raise _BadBase(number, exc.path) from exc",
        "r5: a shape frame failing its deferred CRC fails the load instead of falling back",
    ),
    Mutant(
        "retired_stream_not_adopted",
        "compactor.py",
        "                if run is not None and _adopt_retired_stream(",
        "                if False and _adopt_retired_stream(",
        "r6: a live writer of a retired run is a gap at every fold, never collectable",
    ),
    Mutant(
        "completion_never_taken_over",
        "algebra.py",
        "                if src not in self.fresh:  # held since an earlier evaluation: take it over",
        "                if src not in self.fresh:  # mutant: no takeover\n                    return\n                if False:",
        "r4 case 2: the run that drained first holds a completion, not the smaller run id",
    ),
    Mutant(
        "retired_holder_state_dropped",
        "algebra.py",
        "                    pending[(holder, src)] = held",
        "                    if not state.runs[holder].retired:  # mutant\n                        pending[(holder, src)] = held",
        "a completion taken over from a retired run forgets that run's drained state (a reset of the taker "
        "then depends on whether a compaction published the takeover)",
    ),
    Mutant(
        "outputs_of_a_live_run_collected",
        "outputs.py",
        "(not drained and quiet(n.run))",
        "not drained",
        "output gc deletes the outputs of a run still alive whose state of a source another run completed is not "
        "drained yet (that run may drain it and, the smaller run id, take it over)",
    ),
    Mutant(
        "foreign_snapshot_numbers_counted",
        "compactor.py",
        "    state.number = max((n for n, _ in snaps if n not in foreign_numbers), default=0) + 1",
        "    state.number = latest + 1",
        "a compaction numbers its snapshot past foreign snapshots (debris GC collects, leaving the numbers below "
        "free): a higher number may then cover less than a lower one (RFC 0004, Amendment)",
    ),
    Mutant(
        "gc_judges_segments_by_the_oldest_retained_only",
        "compactor.py",
        "            for frames in retained[1:]:\n                if frames is not None:",
        "            for frames in retained[1:0]:\n                if frames is not None:",
        "GC deletes a segment the oldest retained snapshot covers although a newer retained one does not",
    ),
    Mutant(
        "gc_ignores_a_clear_during_its_listings",
        "compactor.py",
        "    if read_epoch(store) != epoch:  # (a clear deletes meta.msgpack first)",
        "    if False:",
        "a GC that spans a clear and re-create deletes the new checkpoint's objects as another epoch's",
    ),
    Mutant(
        "gc_deletes_snapshots_by_name",
        "compactor.py",
        "    same = [o for o in old if snapshots.get(o.path) == (o.size, o.mtime)]",
        "    same = list(old)",
        "GC deletes the snapshot names it listed, also one a new epoch has published under that name since",
    ),
    Mutant(
        "retired_runs_late_record_ignored",
        "algebra.py",
        "                self._void_reopened(header.run_id, b)",
        "                pass",
        "every record of a retired run is ignored, also a late one that would reopen a completion the run holds "
        "(the completion stands although the run's durable records do not drain the source)",
    ),
    Mutant(
        "retire_drops_held_states",
        "algebra.py",
        "if k[0] in gone and not s.complete]",
        "if k[0] in gone]",
        "retiring a run drops its drained state that a smaller run's takeover shadows (the source is lost if "
        "that completion is voided)",
    ),
    Mutant(
        "run_liveness_by_the_writers_clock",
        "outputs.py",
        "        t = seen[1] if seen is not None and seen[0] >= m.seq else m.last_ms / 1000",
        "        t = m.last_ms / 1000",
        "output gc judges whether a run is alive by its writers' clocks (the segment headers' times), not the "
        "storage's: a run whose writers' clocks lag looks quiet while it writes",
    ),
    Mutant(
        "simple_completion_judged_by_a_key_with_an_id_cut_out",
        "_fastfold.py",
        "    solo |= np.fromiter(map(EMIT_KEY.__contains__, srcs), dtype=bool, count=len(srcs))\n"
        "    solo |= np.fromiter(map(DONE_KEY.__contains__, srcs), dtype=bool, count=len(srcs))",
        "    solo |= False",
        "the fast path takes a complete() found by its shape key for every source of that key, also one whose "
        "id is in a reserved key (its keys differ from another source's that have the same key with the id cut out)",
    ),
    Mutant(
        "done_writers_forgotten",
        "algebra.py",
        "        if writers is None or len(writers) != len(entries):\n            writers = (pseudo,) * len(entries)",
        "        if True:\n            writers = (pseudo,) * len(entries)",
        "r4 case 1: a collapsed completion forgets which stream wrote each key (a same-stream rewrite is a conflict)",
    ),
    Mutant(
        "duplicate_writer_not_added",
        "algebra.py",
        "        if writers is None:\n            if entries == SIMPLE_COMPLETION:\n",
        "        if True:\n            if True:  # mutant: never a writer more\n",
        "a duplicate from another stream after completion is not recorded as a writer of the key",
    ),
    Mutant(
        "closed_stream_pruned_on_one_listing",
        "compactor.py",
        "    listed = loaded.streams_listed | loaded.streams_relisted\n",
        "    listed = loaded.streams_listed\n",
        "a closed stream's mark is dropped when one stale listing misses its last segment",
    ),
    Mutant(
        "reset_of_retired_run_ignored",
        "algebra.py",
        "            for b in batches:  # an operator's tombstone is not a record of the run that carried it\n                for r in b.resets:\n                    self.apply_reset(r)\n",
        "",
        "a reset written under a run retired before its segment is folded is dropped with that run's records",
    ),
    Mutant(
        "snapshot_forgets_emitted_flag",
        "snapshot.py",
        "        s.emitted, s.tainted = p.emitted, p.tainted",
        "        s.tainted = p.tainted",
        "a snapshot does not restore the emitted flag of pending states",
    ),
    Mutant(
        "foreign_objects_count",
        "compactor.py",
        "    return bool(epoch) and epoch != live",
        "    return False",
        "readers count the objects of a deleted checkpoint's epoch (RFC 0004)",
    ),
    Mutant(
        "compaction_publishes_into_a_deleted_checkpoint",
        "compactor.py",
        "    if expect is not None and epoch != expect:",
        "    if False:",
        "a compaction opened before a delete publishes into the new checkpoint",
    ),
    Mutant(
        "corrupt_segment_skipped",
        "compactor.py",
        '    if loaded.state.damage_run(run, f"{key}: {exc}", kind="corrupt_segment"):\n        loaded.salvaged = True\n',
        "",
        "a corrupt segment is skipped without quarantining its run",
    ),
    Mutant(
        "layer_merge_loses_an_id",
        "layers.py",
        "            if b == ub:\n                li += 1",
        "            if b >= ub:\n                li += 1",
        "a merge of two layers drops the lower layer's entry after each entry of the upper one",
    ),
    Mutant(
        "layer_merge_resurrects_an_id",
        "layers.py",
        "    drop = set(tombs)\n",
        "    drop: set[bytes] = set()\n",
        "a merge ignores the upper layer's tombstones: an uncompleted id completes again",
    ),
    Mutant(
        "merge_copies_a_block_an_id_falls_in",
        "layers.py",
        "        if below is not None and (hi is None or below < hi):\n",
        "        if below is not None and hi is None:\n",
        "a merge copies a stored block although ids of the other layer fall between its fences",
    ),
    Mutant(
        "merge_copies_a_block_with_other_shape_ids",
        "layers.py",
        "    copy_upper = upper.frames is not None and not dead and usame_runs and usame\n",
        "    copy_upper = upper.frames is not None and not dead and usame_runs\n",
        "a merge copies the upper layer's blocks although its shape ids are renumbered in the merged layer",
    ),
    Mutant(
        "merge_by_ids_ignores_ids_completed_again",
        "layers.py",
        "        if set(lower_ids).isdisjoint(upper_ids):  # (no id completed again above)\n",
        "        if True:\n",
        "a merge of one-run layers by the ids alone keeps both entries of an id completed again above",
    ),
    Mutant(
        "gc_deletes_a_live_layer",
        "compactor.py",
        "        if n is None or o.path in named:",
        "        if n is None:",
        "GC deletes layers a retained snapshot still names",
    ),
    Mutant(
        "layer_lookup_misses_a_block_first_id",
        "layers.py",
        "        k = bisect_right(fences, b) - 1\n        if k < 0:\n            return -1\n",
        "        k = bisect_right(fences, b[:-1]) - 1\n        if k < 0:\n            return -1\n",
        "a lookup takes the block before the one an id opens (format 6): its first id is never found",
    ),
    Mutant(
        "bulk_lookup_misses_a_block_first_id",
        "layers.py",
        "            b = bisect_left(bs, fences[k + 1], a) if k < last else n\n",
        "            b = bisect_right(bs, fences[k + 1], a) if k < last else n\n",
        "a bulk lookup (a fold's new sources against its base) looks a block's first id up in the block before",
    ),
    Mutant(
        "merge_drops_layers_stacked_meanwhile",
        "compactor.py",
        "            new_refs = [*refs[:at], built.ref, *refs[at + len(built.inputs) :]]\n",
        "            new_refs = [*refs[:at], built.ref]\n",
        "a background merge rebasing over a tick drops the layers the tick stacked above the merged ones",
    ),
    Mutant(
        "merge_layer_not_kept_by_gc",
        "compactor.py",
        "        target = max(latest, number) + 1 + MERGE_HEADROOM\n",
        "        target = max(latest, number)\n",
        "a background merge names its layer with a snapshot number already taken: GC collects it before it is named",
    ),
]


MUTANTS += [
    # issue 17: the fold's fast path (killed by test_fast_fold.py's comparison with the reference)
    Mutant(
        "fast_path_ignores_emission",
        "_fastfold.py",
        "    ok = (cols.sums == 0) & cols.emitted\n",
        "    ok = cols.sums == 0\n",
        "the fast path completes a drained source that was never emitted",
    ),
    Mutant(
        "fast_path_completes_a_complete_source",
        "_fastfold.py",
        "    ok[buf.in_added] = False\n",
        "",
        "the fast path completes a source another run had completed when its fresh state was numbered",
    ),
    Mutant(
        "fast_path_misses_a_touched_completion",
        "_fastfold.py",
        "    since = {*ev.done, *map(_SOURCE, ev.took)}\n",
        "    since: set[str] = set()\n",
        "the fast path completes a source a touched state completed earlier in the same evaluation",
    ),
    Mutant(
        "fast_path_misses_a_touched_take_over",
        "_fastfold.py",
        "    since = {*ev.done, *map(_SOURCE, ev.took)}\n",
        "    since = set(ev.done)\n",
        "the fast path completes a source whose completion of the base a touched state took over earlier in "
        "the same evaluation",
    ),
    Mutant(
        "fast_path_ignores_repeated_keys",
        "_fastfold.py",
        "    ok[cand_arr[duplicate]] = False  # a key written twice",
        "    pass  # mutant: a key written twice",
        "the fast path sums a key written twice as two entries",
    ),
    Mutant(
        "fast_path_touch_order",
        "_fastfold.py",
        "            if fresh_before and k not in touched:",
        "            if False:",
        "the fast path touches a pending state after a fresh one (the evaluation order changes)",
    ),
    Mutant(
        "native_keys_taken_as_distinct",
        "_fastfold.py",
        "            pk, distinct, uniq, which = known\n",
        "            pk, _, uniq, which = known\n            distinct = b'\\x01' * len(pk)  # mutant: every state's keys taken as distinct\n",
        "the compiled kernels' path completes in bulk a state that wrote a key twice",
    ),
    Mutant(
        "native_numbers_kept_on_a_late_record",
        "_fastfold.py",
        "                    for src in new:  # (numbered in index already: change nothing)\n                        del index[src]\n",
        "                    pass  # mutant: the new states' numbers stay in the index\n",
        "a batch with a late record leaves the states it numbered in the fast path's index",
    ),
    Mutant(
        "fast_path_forgets_the_run_of_a_general_batch",
        "_fastfold.py",
        "                buf.base_pos.append(where[src])\n                buf.runs.add(run)\n",
        "                buf.base_pos.append(where[src])\n",
        "the fast path takes a round's fresh states for one run's although a batch with a pending state "
        "numbered some of another run",
    ),
    Mutant(
        "fast_path_completes_for_a_damaged_run",
        "_fastfold.py",
        "            ok &= one_run not in ev.damaged\n",
        "            pass  # mutant: the one run's damage not checked\n",
        "the fast path completes in bulk the sources of a damaged run (all fresh states of that one run)",
    ),
    Mutant(
        "fast_path_misses_a_late_record",
        "_fastfold.py",
        "            if run in runs:\n",
        "            if False:  # mutant: a late record numbered as a fresh state\n",
        "the fast path numbers a fresh state for a source its run completed (a late record, which must reopen "
        "the completion through the reference loop)",
    ),
    Mutant(
        "fast_path_materializes_with_the_wrong_ordinals",
        "_fastfold.py",
        "            int(first[i]) if isinstance(first, np.ndarray) else first + i\n",
        "            int(first[i]) if isinstance(first, np.ndarray) else first + i + 1\n",
        "a state the evaluation makes pending, its records worked out alone, gets each record's successor's "
        "ordinal (the order its records came in)",
    ),
    Mutant(
        "fast_path_source_fresh_in_two_runs",
        "_fastfold.py",
        "    if runs is not None and len(set(srcs)) != n:",
        "    if False:",
        "the fast path completes in bulk a source fresh in two runs (which run holds it is the reference rule's)",
    ),
    Mutant(
        "native_layer_entries_runs_and_shapes_swapped",
        "layers.py",
        "        encoded, runs, raw, packed_ends = entries\n",
        "        encoded, raw, runs, packed_ends = entries\n",
        "a new layer built by the compiled kernel gives each id its shape id as its run and its run as its shape",
    ),
    Mutant(
        "spill_drops_round_completions",
        "compactor.py",
        '    encoded = encode_snapshot(view, created_ms=int(time.time() * 1000), epoch=loaded.epoch or b"")\n',
        '    view.added.clear()\n    encoded = encode_snapshot(view, created_ms=int(time.time() * 1000), epoch=loaded.epoch or b"")\n',
        "issue 17/4: a spill loses the completions it moves into layers",
    ),
    Mutant(
        "partial_spill_drops_base_writers",
        "compactor.py",
        "        kept = _less(writers, rest)  # the moved completions' writers and the base's\n",
        "        kept = {s: writers[s] for s in moved if s in writers}  # mutant: the moved ones only\n",
        "issue 17/4: a spill of part of the completions loses the writers of base completions a duplicate changed",
    ),
    Mutant(
        "duplicate_after_writers_closed_dropped",
        "algebra.py",
        "            writers = (self._stream(REOPENED_STREAM),) * len(entries)\n",
        "            return  # mutant: writers unknown, the duplicate forgotten\n",
        "a duplicate from an open stream of a completion whose writers closed is kept or not "
        "depending on whether a spill or a snapshot came between (published writers differ)",
    ),
    Mutant(
        "writers_frame_streams_in_fold_order",
        "snapshot.py",
        "    if any(j != i for j, i in rank.items()):\n",
        "    if False:  # mutant: the table in the order the fold met the streams\n",
        "the done-writers frame's bytes depend on the order the fold met the streams "
        "(a spill or a snapshot before changes it)",
    ),
    Mutant(
        "spill_forgets_provisional_completions",
        "compactor.py",
        "    provisional.freeze()\n",
        "    provisional.recent.clear()\n    provisional.lists.clear()\n",
        "issue 17/4: after a spill, a later record of the same fold reopens a round's completion "
        "as a late record, and a quarantine keeps it",
    ),
    Mutant(
        "provisional_merge_holds_every_id",
        "_provisional.py",
        "    a_lists, b_lists = lower.lists(), upper.lists()\n",
        "    a_lists, b_lists = iter(list(lower.lists())), iter(list(upper.lists()))  # mutant: all at once\n",
        "issue 17/4: a freeze merging its frozen runs holds all their ids as Python strings (memory grows "
        "with the completed ids)",
    ),
    Mutant(
        "layer_spool_loses_blocks_held_in_memory",
        "layers.py",
        "                for p, c in self._frames:\n                    self._spool.write(p, c)\n",
        "",
        "a layer writer that starts spooling drops the blocks it held in memory",
    ),
    Mutant(
        "spooled_layer_stamped_without_its_head",
        "layers.py",
        "            f, start = self._file, self.reserve - n\n",
        "            f, start = self._file, self.reserve - n + FRAME_HEADER_SIZE\n",
        "a spooled layer's stored object starts after the start of the head written before its blocks",
    ),
    Mutant(
        "spilled_layers_not_written",
        "compactor.py",
        "            out.append((n, data))\n    return out\n",
        "            pass\n    return out\n",
        "issue 17/4: the published snapshot names layers a spill made that nobody wrote",
    ),
    Mutant(
        "column_batch_counts_its_sources",
        "_columns.py",
        "        return len(self.flags)\n",
        "        return len(self.sources)\n",
        "issue 17/3: a batch decoded into columns counts its sources as its records (the ordinals of "
        "the records after it shift)",
    ),
    Mutant(
        "column_keys_of_msgspec_batches_dropped",
        "_fastfold.py",
        "    spans = [k if isinstance(k, KeySpans) else KeySpans.of(k) for k in parts]\n",
        "    spans = [k for k in parts if isinstance(k, KeySpans)]\n",
        "issue 17/3: a round's keys put in state order leave out those of batches msgspec decoded "
        "(a round of both kinds)",
    ),
    Mutant(
        "writers_frame_drops_the_bases_live_writers",
        "snapshot.py",
        "        for src, es in stored.items() if open_at else ():\n",
        "        for src, es in stored.items() if not open_at else ():\n",
        "issue 17/3: a snapshot (or a spill) leaves out the writers its base kept for completions "
        "that a still-open stream wrote",
    ),
    Mutant(
        "layer_lookup_misses_its_largest_id",
        "layers.py",
        "                n = bisect_right(bs, top, 0, n)\n",
        "                n = bisect_left(bs, top, 0, n)\n",
        "issue 17/2: a bulk lookup in a layer takes the layer's largest id for one above it (a "
        "completed id reads as not completed)",
    ),
    Mutant(
        "bulk_lookup_skips_the_largest_id",
        "layers.py",
        "        return top is not None and b > top\n",
        "        return top is not None and b >= top\n",
        "issue 17/3: a lookup (a fold's bulk lookup of new sources, or one id) takes a layer's largest "
        "id for one above it (a late record of a completed source is folded as a fresh state)",
    ),
    Mutant(
        "provisional_join_keeps_discarded_ids",
        "_provisional.py",
        "                if i < j:  # a discarded id in the chunk's range\n",
        "                if False:  # mutant: chunks copied with their discarded ids\n",
        "issue 17/4: joining two disjoint frozen runs brings back ids discarded since they were "
        "frozen (a reopened or voided completion is provisional again)",
    ),
    Mutant(
        "done_shape_set_skips_the_held_lists",
        "done_shapes.py",
        "        if not self._ids:\n            self._dict[source] = shape_id\n",
        "        if True:\n            self._dict[source] = shape_id\n",
        "issue 17/3: a completion's shape id set while bulk ones are held as lists goes into the dict "
        "at once, and a listed older one overwrites it when they settle (the wrong final entries)",
    ),
    Mutant(
        "done_shape_lists_settle_newest_first",
        "done_shapes.py",
        "            for ids, sids in zip(self._ids, self._sids):\n",
        "            for ids, sids in reversed(list(zip(self._ids, self._sids))):\n",
        "issue 17/3: the lists a DoneShapeMap holds settle newest first (an id's older shape id wins)",
    ),
    Mutant(
        "done_shape_subset_ignores_the_lists",
        "done_shapes.py",
        "        for ids, sids in zip(self._ids, self._sids):  # (in order: later ones win, as settled)\n",
        "        for ids, sids in []:  # mutant: the lists not read\n",
        "issue 17/3: a partial spill keeps, of the completions it leaves in Python objects, only the done "
        "shapes already settled (the others lose their final entries)",
    ),
    # the compiled kernels (``_native.c``): the copy is compiled as ``pip install -e .``
    # compiles it (``hatch_build.compile_native``) and the suite runs with
    # ``RESUMELOG_NATIVE=1``, so the mutated module is the one in use
    Mutant(
        "c_backward_shift_ignores_the_wrap_around",
        "_native.c",
        "    return i <= j ? (i < home && home <= j) : (i < home || home <= j);\n",
        "    return i < home && home <= j; /* mutant: the run of slots taken as never wrapping round */\n",
        "issue 17/3: a deletion from SourceIndex or SourceMap moves a key back past its home slot when the "
        "run of slots wraps round the table's end (the key is then not found: a fresh state numbered twice, a "
        "completed id read as not completed)",
    ),
    Mutant(
        "c_map_set_keeps_the_old_run",
        "_native.c",
        "            PyObject *old = e->value;\n            Py_INCREF(value);\n            e->value = value;\n"
        "            Py_DECREF(old);\n",
        "            (void)e; /* mutant: the value of a key already there is not replaced */\n",
        "issue 17/3: SourceMap keeps an id's old value when it is set again (a completion taken over keeps "
        "the run that held it)",
    ),
    Mutant(
        "c_number_states_folds_a_late_record",
        "_native.c",
        "                int late = r == run ? 1 : PyObject_RichCompareBool(r, run, Py_EQ);\n",
        "                int late = 0; /* mutant: a source its own run completed numbered fresh */\n",
        "issue 17/3: the kernel numbers a fresh state for a source its run completed (a late record, which "
        "must reopen the completion through the reference loop)",
    ),
    Mutant(
        "c_number_states_misses_another_runs_completion",
        "_native.c",
        "                int ok = at != NULL && PyList_Append(in_added, at) == 0;\n",
        "                int ok = at != NULL; /* mutant: not listed as completed by another run */\n",
        "issue 17/3: the kernel does not report a fresh state whose source another run completed, so the "
        "evaluation completes it in bulk again (its holder changes)",
    ),
    Mutant(
        "c_number_states_ignores_a_pending_state",
        "_native.c",
        "        if (check_pending) {\n",
        "        if (0) { /* mutant: a source with a pending state numbered fresh */\n",
        "issue 17/3: the kernel numbers a fresh state for a (run, source) that has a pending state (two "
        "states for one, each with part of the records)",
    ),
    Mutant(
        "c_keys_taken_as_distinct",
        "_native.c",
        "                if (nx == ny && memcmp(x, y, (size_t)nx) == 0) return 0;\n",
        "                if (0) return 0; /* mutant: decoded keys never compared */\n",
        "issue 17/3: the kernel takes a decoded state's keys for distinct without comparing them, so a state "
        "that rewrote a key completes in bulk on the sum of its records",
    ),
    Mutant(
        "c_layer_entries_trust_misaligned_shape_lists",
        "_native.c",
        "    if (walked != listed) { /* the lists do not line up with added */\n",
        "    if (0) { /* mutant: lists that do not line up are trusted */\n",
        "issue 17/3: a layer built from a fold's completions takes the done-shape lists for aligned with the "
        "completed set when they are not (ids the walk passed by get no shape, and their entries are lost)",
    ),
    Mutant(
        "c_decoder_misreads_negative_fixints",
        "_native.c",
        "        *v = (int8_t)c;\n",
        "        *v = (int64_t)c; /* mutant: a negative fixint read as 224..255 */\n",
        "issue 17/3: the column decoder reads a delta of -32..-1 as a large positive one (a sink's -1 never "
        "drains its source)",
    ),
    Mutant(
        "c_block_ids_left_in_their_order",
        "_native.c",
        "    if (sort_by_hash(keyed, n) < 0) goto fail; /* (hash, index): a stable order */\n",
        "    if (0) goto fail; /* mutant: the block's ids not sorted by hash */\n",
        "issue 17/1: a new layer's block keeps its ids in key order, not in the order of their hashes that a "
        "lookup bisects (a completed id read as not completed)",
    ),
    Mutant(
        "c_shape_pattern_ignores_marks_in_keys",
        "_native.c",
        "        if (memchr(d, sp, (size_t)n) != NULL || memchr(d, ct, (size_t)n) != NULL) return 2;\n",
        "        (void)ct; /* mutant: a key holding the separator or the cut mark is cached all the same */\n",
        "issue 17/3: the shape cache keys a state whose keys hold the separator or the cut mark, so states "
        "with other keys share its key and take its shape (their done entries are another source's)",
    ),
    Mutant(
        "c_int64s_truncates_a_large_delta",
        "_native.c",
        "        if (overflow) {\n",
        "        if (0) { /* mutant: a delta beyond 64 bits packed as -1 */\n",
        "issue 17/3: a batch's deltas are packed into int64 even when one does not fit (msgpack allows up to "
        "2^64 - 1), so the fast path sums a wrong value",
    ),
]


def prepare(workdir: Path, mutant: Mutant | None) -> None:
    shutil.copytree(
        ROOT / "src" / "resumelog", workdir / "src" / "resumelog", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "property_tests", workdir / "property_tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    if mutant is None:
        return
    target = workdir / "src" / "resumelog" / mutant.path
    text = target.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: the text to replace occurs {count} times in {mutant.path}")
    target.write_text(text.replace(mutant.old, mutant.new))
    if is_native(mutant):
        for built in (workdir / "src" / "resumelog").glob("_native*.so"):
            built.unlink()  # (the copied module: never the one imported if the build goes wrong)
        if compile_native(str(workdir), str(workdir / "src" / "resumelog")) is None:
            raise NotBuilt(f"mutant {mutant.name}: the mutated _native.c does not compile (see above)")


def is_native(mutant: Mutant | None) -> bool:
    """Whether ``mutant`` plants its bug in the compiled kernels' source."""
    return mutant is not None and mutant.path.endswith(".c")


class NotBuilt(Exception):
    """A mutant of ``_native.c`` could not be compiled here (no compiler, or the mutant
    is not valid C): reported, never counted as killed."""


def compile_native(root: str, out_dir: str) -> str | None:
    """``hatch_build.compile_native``: the install's own build of ``_native.c``."""
    return _hatch_build().compile_native(root, out_dir)  # type: ignore[no-any-return]


@functools.cache
def _hatch_build() -> Any:
    """The repository's ``hatch_build.py``, loaded once (no change to ``sys.path``: mutants
    build in threads). Called first from the main thread, before any build: it also fills
    ``sysconfig``'s variables, whose lazy first filling is not thread-safe (a build in
    another thread then saw no ``EXT_SUFFIX`` and wrote ``_native.so``)."""
    sysconfig.get_config_vars()
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_suite(workdir: Path, timeout: float, extra: list[str], native: bool = False) -> tuple[int, str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(workdir / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HYPOTHESIS_PROFILE"] = "ci"
    env.pop("PYTEST_ADDOPTS", None)
    if native:
        env["RESUMELOG_NATIVE"] = "1"  # (the mutated kernels, or an ImportError: never the pure-Python path)
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resumelog; from resumelog._compiled import native; "
            "print(resumelog.__file__); print(native.__file__ if native else '')",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"the copy in {workdir} does not import:\n{found.stderr}")
    where = found.stdout.split()
    if not where[0].startswith(str(workdir)):
        raise SystemExit(f"the copy is not the package imported ({where[0]}); check how resumelog is installed")
    if native and not (len(where) > 1 and where[1].startswith(str(workdir))):
        raise SystemExit(f"the mutated kernels are not the module imported ({where[1:]})")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "property_tests",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not known_bug",
        "--ignore=property_tests/test_mutants_apply.py",  # checks the unmutated code (fails on any mutant)
        *extra,
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = -1, f"timed out after {timeout}s\n{exc.stdout or ''}"
    return code, out, time.monotonic() - t0


def first_failure(output: str) -> tuple[str, str]:
    """``(test id, first assertion line)`` of the first failure in pytest's output."""
    m = re.search(r"^FAILED (\S+)", output, re.M)
    test = m.group(1) if m else "?"
    err = re.search(r"^\s*\|?\s*E?\s*((?:AssertionError|[A-Za-z]+Error|Failed|Flaky)\b.*)$", output, re.M)
    return test, (err.group(1).strip()[:110] if err else "")


def run_one(mutant: Mutant | None, timeout: float, extra: list[str]) -> tuple[int, str, float]:
    """Copy, mutate and run the suite for one mutant (``None``: the unmutated code)."""
    with tempfile.TemporaryDirectory(prefix="resumelog-mutant-") as tmp:
        try:
            prepare(Path(tmp), mutant)
        except NotBuilt as exc:
            return NOT_BUILT, str(exc), 0.0
        return run_suite(Path(tmp), timeout, extra, native=is_native(mutant))


NOT_BUILT = -2
"""``run_one``'s code for a mutant of ``_native.c`` that could not be compiled."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    ap.add_argument("--show", action="store_true", help="print each run's full output")
    ap.add_argument("--logs", help="directory to keep each run's output in")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run (default 900)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once, each on one core (default 2)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument(
        "--retry-survivors",
        type=int,
        default=1,
        help="run a surviving (or timed-out) mutant again this many times before reporting it (default 1: "
        "a few kills come from real thread races, which a busy machine can miss once)",
    )
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        ap.error(f"unknown mutant; known: {', '.join(m.name for m in MUTANTS)}")
    logs = Path(args.logs) if args.logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    extra = ["-n", "0", *args.pytest_args]  # one core per run; --jobs runs side by side
    t_start = time.monotonic()
    if not args.no_baseline:
        code, out, secs = run_one(None, args.timeout, extra)
        if logs:
            (logs / "baseline.txt").write_text(out)
        if code != 0:
            print(out)
            print(f"the unmutated suite fails (exit {code}): fix that first", file=sys.stderr)
            return 2
        print(f"baseline: suite passes in {secs:.0f}s", flush=True)
    rows = []
    if any(map(is_native, chosen)):
        _hatch_build()  # (in this thread, before the pool's builds: see there)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {m.name: pool.submit(run_one, m, args.timeout, extra) for m in chosen}
        for mutant in chosen:  # in table order, as each finishes
            code, out, secs = futures[mutant.name].result()
            for _ in range(args.retry_survivors):
                if code not in (0, -1):
                    break
                print(f"{mutant.name}: survived in {secs:.0f}s, running it again", flush=True)
                code, out, more = run_one(mutant, args.timeout, extra)
                secs += more
            if logs:
                (logs / f"{mutant.name}.txt").write_text(out)
            if args.show:
                print(f"===== {mutant.name} =====\n{out}", flush=True)
            killed = code == 1  # tests failed (2-5: interrupted, internal or usage error, none collected)
            if killed:
                test, err = first_failure(out)
            else:
                test, err = {0: "-", -1: "timeout", NOT_BUILT: "not built"}.get(code, f"pytest exit {code}"), ""
            rows.append((mutant.name, "yes" if killed else "NO", test, err, secs))
            print(f"{mutant.name}: {'killed' if killed else 'SURVIVED'} in {secs:.0f}s by {test}", flush=True)
    print()
    w = max([len(r[0]) for r in rows] + [6])
    wt = max([len(r[2]) for r in rows] + [12])
    print(f"{'mutant':<{w}}  killed  {'failing test':<{wt}}  secs  first error")
    for name, killed, test, err, secs in rows:
        print(f"{name:<{w}}  {killed:<6}  {test:<{wt}}  {secs:4.0f}  {err}")
    survivors = sum(r[1] != "yes" for r in rows)
    print(
        f"\n{len(rows) - survivors} of {len(rows)} mutants killed in {time.monotonic() - t_start:.0f}s (--jobs {args.jobs})"
    )
    return 0 if survivors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
