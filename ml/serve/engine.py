"""The serving engine for one base model: continuous batching of many requests and LoRA adapters.

Owns the scheduler thread, admission (queue and size limits, adapter cache), chunked prefill
interleaved with decode steps, and delivering events. Model math lives in decoder.py, row bookkeeping
in rows.py, per-request state in sequence.py, sampling in sampling.py, adapters in lora.py. It knows
nothing about HTTP: the API wraps submit()/RequestHandle and maps ServeError.status to a response.

Each scheduler iteration: reap cancelled requests, admit waiting ones into free rows, run one prefill
forward over up to `prefill_chunk` prompt tokens (oldest first), then one decode step for every
decoding row; a request joins the running batch at the next iteration, never waiting for it to drain.
Admission copies the longest cached prefix of a prompt into its row (prefix_cache.py), so prefill
computes only the rest; a row's whole blocks are stored once its prompt is in and again when it ends.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
import warnings
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from ml.models import TORCH_DTYPES, Dtype, Quantization, load_causal_lm, load_tokenizer, resolve_dtype
from ml.records import Message
from ml.serve.constrained import GrammarCache, GrammarSpec
from ml.serve.decoder import DecoderRunner
from ml.serve.detokenize import IncrementalDetokenizer, StopStringMatcher
from ml.serve.handle import RequestHandle, wake_all
from ml.serve.lora import BASE, AdapterRegistry, LoraAdapter, read_lora_adapter
from ml.serve.lora_batch import LoraBatch
from ml.serve.prefix_cache import PrefixCache
from ml.serve.request import (
    Completion,
    EngineBusy,
    EngineClosed,
    GenerationRequest,
    RequestTooLarge,
    UnknownAdapter,
    validate_request,
)
from ml.serve.rows import RowTable
from ml.serve.sampling import SamplingState, sample_batch
from ml.serve.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    running: int
    waiting: int
    prefilling: int
    prompt_tokens_total: int
    generated_tokens_total: int
    requests_finished_total: int
    finished_by_reason: dict[str, int]
    """Requests ended since start, by finish reason (stop, length, cancelled, error), queued ones too."""
    loaded_adapters: list[str]
    kv_cache_bytes: int
    prefill_tokens_computed_total: int = 0
    """Prompt positions run through the model (prefix-cache hits excluded)."""
    prefix_tokens_reused_total: int = 0
    """Prompt positions copied from the prefix cache instead of being computed."""
    prefix_cache_bytes: int = 0
    prefix_cache_blocks: int = 0


class Engine:
    """Continuous-batching generation over one base model and any number of its LoRA adapters.

    Thread-safe: submit/cancel/register from any thread; one scheduler thread runs the model.
    """

    def __init__(
        self,
        base_model_path: str | Path,
        *,
        dtype: Dtype = "float32",
        quantization: Quantization = "none",
        max_batch_size: int = 8,
        max_queue: int = 64,
        max_prompt_tokens: int | None = None,
        max_total_tokens: int | None = None,
        adapter_cache_size: int = 8,
        prefill_chunk: int = 256,
        prefix_cache_mb: float = 256,
        prefix_block_size: int = 16,
        model_id: str | None = None,
        device: str | None = None,
        start: bool = True,
    ) -> None:
        """Loads the model (seconds; blocking) on the engine's own thread and returns when it is ready.
        device: where the base model is loaded ("cpu", "cuda", "cuda:1"); None = cuda when available.
        Every tensor the engine makes follows the model (self.device), wherever it ended up.
        start=False leaves the scheduler stopped until start() (tests use it to queue a batch).
        prefix_cache_mb: memory for keys/values of prompt blocks reused across requests (0 = off),
        in blocks of prefix_block_size tokens."""
        self.model_id = model_id or str(base_model_path)
        self.base_model_path = Path(base_model_path)
        self.requested_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = resolve_dtype(dtype, self.requested_device)  # "auto": bf16 where the hardware has it
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)} or 'auto', not {dtype!r}")
        self.torch_dtype = TORCH_DTYPES[dtype]
        if quantization == "8bit":  # bitsandbytes warns on every 8-bit matmul (STACK.md)
            warnings.filterwarnings("ignore", message="MatMul8bitLt")
        self.tokenizer = load_tokenizer(base_model_path)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_chunk = max(1, prefill_chunk)
        self.prefix_cache_bytes = int(max(0.0, prefix_cache_mb) * 1024**2)
        self.prefix_block_size = max(1, prefix_block_size)
        self.adapters = AdapterRegistry(adapter_cache_size, self._read_adapter)
        self._lock = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._order = itertools.count()
        # stacked LoRA weights per set of active adapters; scheduler thread only
        self._stacks: dict[tuple, tuple[list[LoraAdapter], list]] = {}
        self._stacks_generation = 0
        self._closed = False
        self._grammars: GrammarCache | None = None
        self._grammar_lock = threading.Lock()
        self._prompt_tokens_total = 0
        self._computed_total = 0
        self._reused_total = 0
        self._generated_total = 0
        self._finished_total = 0
        self._by_reason: Counter[str] = Counter()
        # Every torch op of the engine (loading included) runs on this one thread. OpenMP keeps a
        # worker pool per calling thread; once two pools exist on a small machine libgomp stops
        # spinning and each parallel region pays a sleep/wake-up (measured: 8 -> 100 us per small
        # matmul), so other threads of a serving process should leave torch alone.
        self._ready = threading.Event()
        self._go = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main,
            args=(dtype, quantization, max_prompt_tokens, max_total_tokens),
            name=f"engine:{self.model_id}",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error
        if start:
            self.start()

    def _load_model(self, dtype: Dtype, quantization: Quantization) -> torch.nn.Module:
        # On CPU no device_map: bitsandbytes' CPU backend loads without one (STACK.md).
        device_map = {"": self.requested_device} if self.requested_device != "cpu" else None
        return load_causal_lm(
            self.base_model_path, dtype=dtype, quantization=quantization, device_map=device_map
        ).eval()

    def _setup(self, dtype, quantization, max_prompt_tokens, max_total_tokens) -> None:
        self.model = self._load_model(dtype, quantization)
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or 4096
        self.max_total_tokens = min(max_total_tokens or min(limit, 4096), limit)
        self.max_prompt_tokens = min(
            max_prompt_tokens or self.max_total_tokens - 1, self.max_total_tokens - 1
        )
        positions = self.max_total_tokens + self.prefill_chunk  # padded prefill may write past the end
        self.runner = DecoderRunner(self.model, self.torch_dtype, positions, self.max_total_tokens)
        self.device = self.runner.device
        self.vocab_size = self.runner.vocab_size
        self.cache = self.runner.new_cache(self.max_batch_size, positions)
        self.rows = RowTable(self.cache)
        self.prefixes = PrefixCache(self.cache, self.prefix_block_size, self.prefix_cache_bytes)
        self.eos_ids = self._eos_ids()

    def _main(self, *setup_args) -> None:
        torch.set_num_threads(torch.get_num_threads())  # this thread's OpenMP team gets the same size
        try:
            self._setup(*setup_args)
        except Exception as exc:  # noqa: BLE001 -- handed to the constructor, which raises it
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._go.wait()
        self._loop()

    def start(self) -> None:
        """Begin scheduling (only needed after start=False)."""
        self._go.set()

    # ---- public API -----------------------------------------------------------------------------
    def register_adapter(self, name: str, path: str | Path) -> None:
        """Make adapter `name` servable; its weights load on first use (LRU-cached)."""
        self.adapters.register(name, path)

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter. Running sequences finish with the weights they started with."""
        self.adapters.unregister(name)

    def submit(self, req: GenerationRequest) -> RequestHandle:
        validate_request(req, self.vocab_size)
        n_prompt = len(req.prompt_ids)
        if n_prompt > self.max_prompt_tokens:
            raise RequestTooLarge(f"prompt has {n_prompt} tokens; the maximum is {self.max_prompt_tokens}")
        room = self.max_total_tokens - n_prompt
        max_new = req.max_tokens if req.max_tokens is not None else room
        if max_new > room:
            raise RequestTooLarge(
                f"prompt ({n_prompt}) + max_tokens ({max_new}) exceeds {self.max_total_tokens} tokens"
            )
        adapter = None if req.adapter in (None, BASE) else req.adapter
        if adapter is not None and not self.adapters.known(adapter):
            raise UnknownAdapter(f"adapter {adapter!r} is not registered with {self.model_id}")
        handle = RequestHandle(req.request_id or uuid.uuid4().hex, n_prompt)
        stop_ids = self.eos_ids if req.stop_token_ids is None else frozenset(req.stop_token_ids)
        sampling = SamplingState.from_request(req, self.vocab_size, self.device)
        if req.grammar is not None:
            sampling.grammar = self.grammars.matcher(req.grammar, stop_ids)
        seq = Sequence(
            handle=handle,
            req=req,
            adapter_name=adapter,
            max_new=max_new,
            stop_ids=stop_ids,
            sampling=sampling,
            detok=IncrementalDetokenizer(self.tokenizer),
            matcher=StopStringMatcher(req.stop),
            order=next(self._order),
        )
        with self._lock:
            if self._closed:
                raise EngineClosed(f"engine for {self.model_id} is closed")
            if len(self._waiting) >= self.max_queue:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(seq)
            self._lock.notify()
        return handle

    def check_room(self, n: int = 1) -> None:
        """Raise EngineBusy if `n` more requests would not fit in the waiting queue now: a cheap peek, so an
        overloaded server refuses before it renders and tokenizes a prompt (submit checks again)."""
        waiting = len(self._waiting)
        if waiting + n > self.max_queue:
            raise EngineBusy(f"{waiting} requests are already waiting")

    @property
    def grammars(self) -> GrammarCache:
        """The compiled-grammar cache for this engine's vocabulary (built on first use, ~1 s)."""
        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = GrammarCache(self.tokenizer, self.vocab_size, self.eos_ids)
            return self._grammars

    def prepare_grammar(self, spec: GrammarSpec) -> None:
        """Compile a grammar ahead of submit() (blocking; raises InvalidRequest for a bad schema)."""
        self.grammars.compile(spec)

    def generate(self, req: GenerationRequest) -> Completion:
        """Blocking convenience: submit and wait for the Completion."""
        return self.submit(req).result()

    def render_chat(
        self, messages: list[Message] | list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt token ids for a chat, tokenised exactly as training does (ml.data.render)."""
        from ml.data.render import render_prompt

        return render_prompt(self.tokenizer, messages, add_generation_prompt=True, tools=tools)

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=self.rows.running,
                waiting=len(self._waiting),
                prefilling=self.rows.num_prefilling,
                prompt_tokens_total=self._prompt_tokens_total,
                generated_tokens_total=self._generated_total,
                requests_finished_total=self._finished_total,
                finished_by_reason=dict(self._by_reason),
                loaded_adapters=self.adapters.loaded_names(),
                kv_cache_bytes=self.cache.nbytes,
                prefill_tokens_computed_total=self._computed_total,
                prefix_tokens_reused_total=self._reused_total,
                prefix_cache_bytes=self.prefixes.nbytes,
                prefix_cache_blocks=self.prefixes.num_blocks,
            )

    def close(self, timeout: float | None = 30) -> None:
        """Stop the scheduler; unfinished requests end with finish_reason "error"."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._go.set()  # a never-started scheduler still runs once to answer the waiting requests
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def token_text(self, token_id: int) -> str:
        """A token's own text (for OpenAI logprobs "token"); partial UTF-8 shows as U+FFFD."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # ---- setup helpers --------------------------------------------------------------------------
    def _read_adapter(self, name: str, path: Path) -> LoraAdapter:
        return read_lora_adapter(name, path, self.runner.proj_shapes, self.runner.num_layers)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    # ---- scheduler ------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._closed and not self._waiting and not self.rows.running:
                        self._lock.wait()
                    if self._closed:
                        break
                try:
                    self._step()
                except Exception as exc:  # never let one bad step kill the server thread
                    log.exception("engine step failed; failing the running requests")
                    self._fail_running(f"{type(exc).__name__}: {exc}")
        self._fail_running("engine closed")
        self._drain_waiting("engine closed")

    def _drain_waiting(self, message: str) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting:
            self._ended_in_queue(seq, "error", message)

    def _step(self) -> None:
        self._reap_cancelled()
        self._admit()
        if self.rows.num_prefilling:
            self._prefill_step()
        if self.rows.num_decoding:
            self._decode_step()

    def _reap_cancelled(self) -> None:
        for seq in [s for s in self.rows.sequences() if s.handle.cancelled]:
            self._finish(seq, "cancelled")
        with self._lock:
            gone = [s for s in self._waiting if s.handle.cancelled]
            for s in gone:
                self._waiting.remove(s)
        for s in gone:
            self._ended_in_queue(s, "cancelled")

    def _admit(self) -> None:
        """Move waiting requests into free rows, oldest first. A request whose adapter cannot be
        loaded yet (the cache is full of adapters in use) is skipped, not allowed to block the rest."""
        free = self.rows.free
        if free <= 0:
            return
        with self._lock:
            candidates = list(self._waiting)
        taken: list[Sequence] = []
        for seq in candidates:
            if free == 0:
                break
            if seq.handle.cancelled:
                continue  # reaped at the next step
            if seq.adapter_name is not None:
                pinned = {s.adapter_name for s in self.rows.sequences() if s.adapter_name}
                try:
                    seq.adapter = self.adapters.acquire(seq.adapter_name, pinned)
                except Exception as exc:  # noqa: BLE001 -- unknown now, unreadable or foreign weights
                    taken.append(seq)
                    self._ended_in_queue(seq, "error", str(exc))
                    continue
                if seq.adapter is None:
                    continue
            taken.append(seq)
            self.rows.add_prefill(seq)
            self._reuse_prefix(seq)
            free -= 1
        if taken:
            gone = set(map(id, taken))
            with self._lock:
                self._waiting = deque(s for s in self._waiting if id(s) not in gone)

    # ---- prefix cache -------------------------------------------------------------------------
    @staticmethod
    def _kv_key(seq: Sequence):
        """What besides the tokens a sequence's keys and values depend on: its adapter's weights."""
        return None if seq.adapter is None else seq.adapter.fingerprint

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Fill a newly admitted row with its prompt's cached prefix. The last prompt token is always
        computed: its logits give the first generated token."""
        n = self.prefixes.load(self._kv_key(seq), seq.req.prompt_ids, seq.prompt_len - 1, self.cache, seq.row)
        seq.cached = seq.reused = n
        if n:
            with self._lock:
                self._reused_total += n

    def _keep_prefix(self, seq: Sequence) -> None:
        """Store the full blocks a row holds: its prompt, and what it generated once it ends."""
        tokens = seq.req.prompt_ids + seq.generated
        self.prefixes.store(self._kv_key(seq), tokens, seq.cached, self.cache, seq.row)

    def _release(self, seq: Sequence) -> None:
        self._keep_prefix(seq)
        self.rows.release(seq)

    # ---- model steps ----------------------------------------------------------------------------
    def _ids(self, values: list) -> torch.Tensor:
        """A long tensor on the model's device (index/id/position tensors of one step)."""
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _lora_batch(self, seqs: list[Sequence], decode: bool) -> LoraBatch | None:
        names = sorted({s.adapter_name for s in seqs if s.adapter_name})
        if not names:
            return None
        adapters = [next(s.adapter for s in seqs if s.adapter_name == n) for n in names]
        index = {n: i for i, n in enumerate(names)}
        row_adapter = self._ids([index.get(s.adapter_name, -1) for s in seqs])
        dtype = torch.float32 if decode else self.torch_dtype  # see lora_batch.py
        return LoraBatch(self._stacked(tuple(names), adapters, dtype), row_adapter, len(names))

    def _stacked(self, names: tuple[str, ...], adapters: list[LoraAdapter], dtype: torch.dtype) -> list:
        """Stacked LoRA weights for a set of active adapters, cached while the set keeps running."""
        if self._stacks_generation != self.adapters.generation:  # drop stacks of dropped adapters
            self._stacks.clear()
            self._stacks_generation = self.adapters.generation
        key = (names, dtype)
        hit = self._stacks.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], adapters)):
            if len(self._stacks) >= 8:
                self._stacks.pop(next(iter(self._stacks)))
            hit = (adapters, self.runner.stack_adapters(adapters, dtype))
            self._stacks[key] = hit
        return hit[1]

    def _prefill_step(self) -> None:
        pending = sorted(
            self.rows.prefilling(),
            key=lambda s: s.order,
        )
        budget = self.prefill_chunk
        batch: list[tuple[Sequence, int]] = []
        for seq in pending:
            if budget <= 0:
                break
            take = min(seq.prompt_len - seq.cached, budget)
            batch.append((seq, take))
            budget -= take
        t = max(take for _, take in batch)
        # built as Python lists and copied to the device once per step (one transfer each)
        ids = self._ids(
            [seq.req.prompt_ids[seq.cached : seq.cached + take] + [0] * (t - take) for seq, take in batch]
        )
        pos = self._ids([list(range(seq.cached, seq.cached + t)) for seq, _ in batch])
        attn_len = max(seq.cached for seq, _ in batch) + t
        self.cache.ensure(attn_len)
        done = [i for i, (seq, take) in enumerate(batch) if seq.cached + take == seq.prompt_len]
        seqs = [s for s, _ in batch]
        index = self._ids([[i, batch[i][1] - 1] for i in done]).view(-1, 2)
        rows = self._ids([s.row for s in seqs])
        logits = self.runner.forward(
            ids, pos, rows, False, self.cache, attn_len, self._lora_batch(seqs, decode=False), index
        )
        for seq, take in batch:
            seq.cached += take
        with self._lock:
            self._computed_total += sum(take for _, take in batch)
        if done:
            finished = [batch[i][0] for i in done]
            with self._lock:
                self._prompt_tokens_total += sum(s.prompt_len for s in finished)
            tokens, lps = sample_batch(logits, [s.sampling for s in finished])
            for seq, tok, lp in zip(finished, tokens, lps):
                self._keep_prefix(seq)
                self.rows.to_decoding(seq)
                self._accept(seq, tok, lp, wake=False)
            wake_all([s.handle for s in finished])

    def _decode_step(self) -> None:
        seqs = self.rows.decoding()
        d = len(seqs)
        ids = self._ids([[s.generated[-1]] for s in seqs])
        pos = self._ids([[s.cached] for s in seqs])
        attn_len = max(s.cached for s in seqs) + 1
        self.cache.ensure(attn_len)
        index = self._ids([[i, 0] for i in range(d)])
        rows = self._ids(list(range(d)))
        logits = self.runner.forward(
            ids, pos, rows, True, self.cache, attn_len, self._lora_batch(seqs, decode=True), index
        )
        for s in seqs:
            s.cached += 1
        tokens, lps = sample_batch(logits, [s.sampling for s in seqs])
        seqs = list(seqs)
        for seq, tok, lp in zip(seqs, tokens, lps):
            self._accept(seq, tok, lp, wake=False)
        wake_all([s.handle for s in seqs])

    # ---- tokens -> events -----------------------------------------------------------------------
    def _accept(self, seq: Sequence, tok: int, lp, wake: bool = True) -> None:
        ev = seq.accept(tok, lp)
        with self._lock:
            self._generated_total += 1
        if ev.finished:
            self._release(seq)
            with self._lock:
                self._finished_total += 1
                self._by_reason[ev.finish_reason] += 1
        seq.handle._push(ev, wake=wake)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        """End a sequence early (cancelled, error) wherever it is."""
        if seq.row >= 0:
            self._release(seq)
        with self._lock:
            self._finished_total += 1
            self._by_reason[reason] += 1
        seq.handle._push(seq.final_event("", reason, error=error))

    def _ended_in_queue(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        """End a request that never got a row (cancelled while waiting, adapter unloadable, closing)."""
        with self._lock:
            self._by_reason[reason] += 1
        seq.handle._push(seq.final_event("", reason, error=error))

    def _fail_running(self, message: str) -> None:
        """After a failed step the row bookkeeping cannot be trusted: end everything, reset rows."""
        self.prefixes.clear()  # a block stored during the failed step may hold partial writes
        for seq in self.rows.reset():
            self._finish(seq, "error", error=message)
