"""The validation pass: detect the format, convert every record, collect problems and statistics,
and write canonical JSONL.

Owns the file-level rules: one format family per file (the first record that differs is named),
SFT-vs-prompts decided by the whole-file majority of a messages file, duplicates, token statistics,
the minimum example count, and the atomic output (written to a .partial file, renamed into place only
when the report is ok). Reading bytes is ml.data.sources' job; converting one record is the formats'.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ml.data.fastpath import PLAIN_FROM_BYTES, PLAIN_FROM_DICT, encode
from ml.data.formats import (
    FORMATS,
    ConvertContext,
    FormatSpec,
    RecordError,
    SkipRecord,
    detect_format,
    detect_record,
)
from ml.data.formats.fields import json_type
from ml.data.report import Problem, ProblemLog, ValidationReport
from ml.data.sources import ROW_CONTAINERS, Source, parse_line
from ml.data.stats import DuplicateCounter, TokenCounter
from ml.data.text_lines import LAZY, RawItem

log = logging.getLogger(__name__)

SAMPLE_RECORDS = 200  # records used to detect the format
SAMPLE_ITEMS = 2000  # stop sampling after this many items even if most were unreadable


@dataclass
class Options:
    forced: FormatSpec | None
    tokenizer: object | None
    max_length: int
    out_path: Path | None
    max_errors: int
    min_examples: int


def resolve_format(name: str | None) -> FormatSpec | None:
    if name is None:
        return None
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


def _take_sample(items: Iterator[RawItem]) -> list[RawItem]:
    sample: list[RawItem] = []
    n_dicts = 0
    for item in items:
        if item.value is LAZY:
            item = parse_line(item)
        sample.append(item)
        if item.fatal or len(sample) >= SAMPLE_ITEMS:
            break
        if isinstance(item.value, dict):
            n_dicts += 1
            if n_dicts >= SAMPLE_RECORDS:
                break
    return sample


def _keys(record: dict) -> str:
    keys = sorted(k for k, v in record.items() if v is not None)
    return "{" + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") + "}"


def _unrecognised(source: Source, sample: list[RawItem], opts: Options) -> ValidationReport:
    errors = ProblemLog(opts.max_errors)
    for item in sample:
        if item.problem:
            errors.add(item.problem)
    first = next((i for i in sample if i.problem is None), None)
    if first is None and errors.total == 0:
        errors.add(Problem(None, None, None, "the file contains no records"))
    elif first is not None and not isinstance(first.value, dict):
        errors.add(
            Problem(
                first.line,
                first.record,
                None,
                f"expected a JSON object for each example, got {json_type(first.value)}",
            )
        )
    elif first is not None:
        errors.add(
            Problem(
                first.line,
                first.record,
                None,
                f"could not recognise the format: the record has keys {_keys(first.value)}; expected e.g. "
                '{"messages": [...]} (chat), {"instruction", "input", "output"} (Alpaca), '
                '{"conversations": [...]} (ShareGPT) or {"chosen", "rejected"} (preference)',
            )
        )
    n_records = sum(1 for i in sample if i.problem is None)
    if source.container in ROW_CONTAINERS:
        for problem in errors.items:
            problem.unit = "row"
    return ValidationReport(
        None,
        None,
        0,
        errors.items,
        [],
        errors.total,
        0,
        container=source.container,
        compressed=source.compressed,
        n_records=n_records,
        min_examples=opts.min_examples,
    )


def _canonical(d: dict) -> bytes:
    try:
        return encode(d)
    except (OverflowError, TypeError, ValueError):  # integers beyond 64 bits in a tools schema
        return json.dumps(d, ensure_ascii=False).encode("utf-8")


class _Pass:
    """One conversion pass over the items with a fixed format."""

    def __init__(self, spec: FormatSpec, opts: Options, check_mixing: bool):
        self.spec, self.opts, self.check_mixing = spec, opts, check_mixing
        self.errors = ProblemLog(opts.max_errors)
        self.warnings = ProblemLog(opts.max_errors)
        self.dups = DuplicateCounter()
        self.tokens = TokenCounter(opts.tokenizer, opts.max_length) if opts.tokenizer is not None else None
        self.votes: Counter[str] = Counter()
        self.dropped_tools: tuple[int, int | None, int | None] = (0, None, None)  # count, first line, record
        self.n_records = self.n_examples = self.n_skipped = 0
        self.n_plain = 0  # records taken by a fast path: votes for this format

    def run(self, items: Iterable[RawItem], out) -> None:
        from_bytes = PLAIN_FROM_BYTES.get(self.spec.name)
        from_dict = PLAIN_FROM_DICT.get(self.spec.name)
        # a record taken by a fast path must be one detect_record() files under this very format (a plain
        # chat always is: its one key is "messages" and it ends with the assistant)
        checked = self.check_mixing and self.spec.name != "openai_chat"
        for item in items:
            if item.value is LAZY:
                if from_bytes is not None:
                    rec = from_bytes(item.raw)
                    if rec is not None and self._plain(rec, item, out):
                        continue
                item = parse_line(item)
            if item.problem is not None:
                self.errors.add(item.problem)
                if item.fatal:
                    break
                continue
            if from_dict is not None and type(item.value) is dict:
                rec = from_dict(item.value)
                if rec is not None and (not checked or detect_record(item.value) is self.spec) \
                        and self._plain(rec, item, out):
                    continue
            self.n_records += 1
            self._record(item, out)

    def _plain(self, rec, item: RawItem, out) -> bool:
        """A plainly valid OpenAI chat line: its canonical form is the record itself. False when the
        chat template cannot render it (the full path then reports that)."""
        if self.tokens is not None and self.tokens.add_plain_chat(rec.messages) is not None:
            return False
        data = encode(rec)
        self.n_records += 1
        self.n_plain += 1
        self.dups.add(data, item.line, item.record)
        if out is not None:
            out.write(data + b"\n")
        self.n_examples += 1
        return True

    def _record(self, item: RawItem, out) -> None:
        loc = (item.line, item.record)
        value = item.value
        if not isinstance(value, dict):
            self.errors.add(
                Problem(*loc, None, f"expected a JSON object for each example, got {json_type(value)}")
            )
            return
        if self.check_mixing:
            seen = detect_record(value)
            if seen is not None and seen.family != self.spec.family:
                self.errors.add(
                    Problem(
                        *loc,
                        None,
                        f"this record is in {seen.name} format {_keys(value)}, but the file is {self.spec.name} "
                        "(the format of most of its first records); all records in one file must use one format",
                    )
                )
                return
            if seen is not None:
                self.votes[seen.name] += 1
        ctx = ConvertContext()
        try:
            records = self.spec.convert(value, ctx)
        except RecordError as e:
            self.errors.add(Problem(*loc, e.field, e.message))
            return
        except SkipRecord as e:
            self.n_skipped += 1
            self.warnings.add(Problem(*loc, e.field, e.message))
            return
        except Exception as e:  # a converter bug must not turn into a 500 for the user
            log.exception("converter %s failed on %s", self.spec.name, loc)
            self.errors.add(Problem(*loc, None, f"could not be converted ({type(e).__name__}: {e})"))
            return
        for f, m in ctx.warnings:
            self.warnings.add(Problem(*loc, f, m))
        for rec in records:
            text = _canonical(rec.to_dict())
            self.dups.add(text, *loc)
            if out is not None:
                out.write(text + b"\n")
            if self.tokens is not None:
                bad = self.tokens.add(rec)
                if bad:
                    self.errors.add(Problem(*loc, None, bad))
                elif self.tokens.dropped_tool_calls:
                    n, line, record = self.dropped_tools
                    self.dropped_tools = (n + 1, *(loc if n == 0 else (line, record)))
            self.n_examples += 1

    def majority(self) -> FormatSpec:
        if self.n_plain and self.check_mixing:
            self.votes[self.spec.name] += self.n_plain
            self.n_plain = 0
        if not self.votes:
            return self.spec
        top = max(self.votes.values())
        if self.votes.get(self.spec.name, 0) == top:
            return self.spec
        return FORMATS[max(self.votes, key=self.votes.__getitem__)]

    def report(self, source: Source) -> ValidationReport:
        spec, opts = self.spec, self.opts
        if spec.unsupported:
            self.errors.add(Problem(None, None, None, f"this is a {spec.name} file: {spec.unsupported}"))
        unit = "row" if source.container in ROW_CONTAINERS else "record"
        n_dups, first = self.dups.result()
        if n_dups:
            (la, ra), (lb, rb) = self.dups.where(first[0]), self.dups.where(first[1])
            original = Problem(lb, rb, None, "", unit).location
            self.warnings.add(
                Problem(
                    la,
                    ra,
                    None,
                    f"exact duplicate of {original} ({n_dups} duplicate example{'s' if n_dups > 1 else ''} in the "
                    "file; duplicates are kept and count as extra weight)",
                )
            )
        stats = self.tokens.result() if self.tokens is not None else None
        n_tools, line, record = self.dropped_tools
        if n_tools:
            self.warnings.add(
                Problem(
                    line,
                    record,
                    None,
                    f"the base model's chat template does not render tool calls: in {n_tools} example"
                    f"{'s' if n_tools > 1 else ''} the tool-call turns would train an empty reply; "
                    "choose a base model whose chat template supports tools",
                )
            )
        if stats and stats["over_max_length"]:
            self.warnings.add(
                Problem(
                    None,
                    None,
                    None,
                    f"{stats['over_max_length']} example{'s' if stats['over_max_length'] > 1 else ''} "
                    f"({stats['over_max_length_share']:.1%}) {'are' if stats['over_max_length'] > 1 else 'is'} longer than "
                    f"max_length={opts.max_length} tokens and will be truncated",
                )
            )
        if spec.kind is not None and self.n_examples < opts.min_examples:
            self.errors.add(
                Problem(
                    None,
                    None,
                    None,
                    f"only {self.n_examples} usable example{'s' if self.n_examples != 1 else ''}; at least "
                    f"{opts.min_examples} are needed",
                )
            )
        if unit != "record":
            for problem in itertools.chain(self.errors.items, self.warnings.items):
                problem.unit = unit
        return ValidationReport(
            format=spec.name,
            kind=spec.kind,
            n_examples=self.n_examples,
            errors=self.errors.items,
            warnings=self.warnings.items,
            n_errors=self.errors.total,
            n_warnings=self.warnings.total,
            duplicates=n_dups,
            token_stats=stats,
            container=source.container,
            compressed=source.compressed,
            n_records=self.n_records,
            n_skipped=self.n_skipped,
            min_examples=opts.min_examples,
        )


def _convert(source: Source, items: Iterable[RawItem], spec: FormatSpec, opts: Options, check_mixing: bool):
    conv = _Pass(spec, opts, check_mixing)
    if opts.out_path is None:
        conv.run(items, None)
        return conv, conv.report(source)
    partial = opts.out_path.with_name(opts.out_path.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as out:
            conv.run(items, out)
        report = conv.report(source)
        if report.ok:
            os.replace(partial, opts.out_path)
        return conv, report
    finally:
        partial.unlink(missing_ok=True)


def run_source(source: Source, opts: Options) -> ValidationReport:
    """Validate and convert everything the source yields (see ml.data.inspect_file)."""
    items = source.open_items()
    try:
        if opts.forced is not None:
            return _convert(source, items, opts.forced, opts, check_mixing=False)[1]
        sample = _take_sample(items)
        spec = detect_format(i.value for i in sample if i.problem is None)
        if spec is None:
            return _unrecognised(source, sample, opts)
        conv, report = _convert(source, itertools.chain(sample, items), spec, opts, check_mixing=True)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # releases the file handle even when reading stopped early
    winner = conv.majority()
    if winner.kind != spec.kind and source.reopenable:
        # The first records were not representative (e.g. a few chats, then mostly prompt-only rows):
        # the whole-file majority decides, so convert again with the majority's format.
        if opts.out_path is not None:
            opts.out_path.unlink(missing_ok=True)
        again = source.open_items()
        try:
            report = _convert(source, again, winner, opts, check_mixing=True)[1]
        finally:
            close = getattr(again, "close", None)
            if close is not None:
                close()
    return report
