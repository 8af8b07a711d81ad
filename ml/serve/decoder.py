"""A lean forward pass over a Hugging Face Llama-family model for batched serving.

Owns the math of one engine step: embeddings -> decoder layers (fused QKV and gate/up projections,
rotary embeddings, grouped-query attention against the slot KV cache, mixed-adapter LoRA) -> logits for
the requested positions. It reuses the HF module weights (no copy beyond fusing) and mirrors HF's
numerics (fp32 RMSNorm, fp32 softmax) so greedy output matches transformers generate. It does not
schedule, sample, or manage rows (engine.py) nor load adapters (lora.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ml.serve.architectures import SUPPORTED_MODEL_TYPES, unsupported_reason
from ml.serve.kv_cache import KVCache
from ml.serve.lora import LoraAdapter
from ml.serve.lora_batch import GroupLayout, LoraBatch, StackedLora, stack_adapters

__all__ = ["SUPPORTED_MODEL_TYPES", "DecoderRunner", "UnsupportedModel"]
# Fused projections: name -> (input source, parts in output order).
GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


class UnsupportedModel(ValueError):
    pass


def prepack(weight: torch.Tensor, exact: bool = True) -> torch.Tensor | None:
    """oneDNN's blocked copy of a CPU weight, or None where it does not apply.

    A plain linear at decode sizes (a few rows against a weight matrix) reorders the weight on every
    call and reads memory at about half the speed the prepacked layout allows (measured on this model's
    shapes: bf16 23 -> 34 GB/s at 8 rows, 2x on the vocabulary projection; fp32 about 2x too).
    exact: pack only 16-bit weights, and only where a probe gives the same bits as F.linear, so the
    engine's numbers do not change (fp32 is the parity reference, and oneDNN's fp32 kernel rounds the
    last bits differently from the one transformers uses). exact=False also packs fp32 weights: for RL
    rollouts, which sample and are never compared bit for bit (ml.serve.batch_sample)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if weight.dtype not in (torch.bfloat16, torch.float16) and (exact or weight.dtype != torch.float32):
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        got, want = packed_linear(probe, packed, None), F.linear(probe, weight)
        same = torch.equal(got, want) if exact else torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    return packed if same else None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def _fused_bias(
    biases: list[torch.Tensor | None], sizes: list[int], like: torch.Tensor
) -> torch.Tensor | None:
    """The biases of fused parts side by side (zeros for a part without one); None when no part has one."""
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else like.new_zeros(n) for b, n in zip(biases, sizes)])


class Projection:
    """Several linear layers on the same input, run as one matmul when their weights are plain
    tensors (prepacked for oneDNN on a 16-bit CPU model); quantised (bitsandbytes) modules are called
    one by one."""

    def __init__(self, modules: list[torch.nn.Module], fuse: bool = True) -> None:
        self.out_features = [m.out_features for m in modules]
        self.in_features = modules[0].in_features
        plain = fuse and all(type(m) is torch.nn.Linear for m in modules)
        self.modules = None if plain else modules
        self.weight = self.bias = self.packed = None
        if plain:
            w = torch.cat([m.weight.data for m in modules], dim=0).contiguous()
            self.bias = _fused_bias(
                [None if m.bias is None else m.bias.data for m in modules], self.out_features, w
            )
            self.packed = prepack(w)
            if self.packed is not None:
                # The engine reads only the packed copy; the model's own modules keep an empty weight
                # so the dense one is freed (the model object is the engine's alone, never called).
                for m in modules:
                    m.weight.data = w.new_empty(0)
                return
            offset = 0
            for m in modules:  # the HF modules now view the fused tensor: no second copy
                m.weight.data = w[offset : offset + m.out_features]
                offset += m.out_features
            self.weight = w

    @classmethod
    def of_parts(cls, parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Projection:
        """One projection over (weight, bias) parts the caller built (an RL rollout's merged snapshot),
        fused in order and packed for oneDNN where that applies, fp32 included (exact=False)."""
        proj = cls.__new__(cls)
        weight = torch.cat([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
        proj.out_features, proj.in_features = [w.shape[0] for w, _ in parts], weight.shape[1]
        proj.modules, proj.bias = None, _fused_bias([b for _, b in parts], proj.out_features, weight)
        proj.packed = prepack(weight, exact=False)
        proj.weight = weight if proj.packed is None else None
        return proj

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        if self.modules is None:
            return F.linear(x, self.weight, self.bias)
        outs = [m(x) for m in self.modules]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    act: torch.nn.Module


class DecoderRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        max_positions: int,
        max_context: int | None = None,
        live: bool = False,
    ) -> None:
        """max_positions: size of the rotary table (>= any position written, padding included);
        max_context: the longest real sequence served (checked against a sliding window).
        live: read the model's own modules at every call, never fused or prepacked copies, so a model
        that is being trained (a PEFT policy whose LoRA layers wrap the projections) is sampled with
        its current weights (RL rollouts, ml.serve.batch_sample)."""
        cfg = model.config
        reason = unsupported_reason({"model_type": cfg.model_type})
        if reason is not None:
            raise UnsupportedModel(reason)
        window = getattr(cfg, "sliding_window", None)
        if window and getattr(cfg, "use_sliding_window", True) and (max_context or max_positions) > window:
            raise UnsupportedModel(f"sliding-window attention ({window}) is not supported beyond the window")
        self.model = model
        self.config = cfg
        self.dtype = dtype
        # Every tensor the engine makes lives where the model's embeddings do (a bitsandbytes base
        # lands on cuda:0 by itself; a plain one wherever it was loaded).
        self.device = model.get_input_embeddings().weight.device
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups_per_kv = self.num_heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        inner = model.model
        self.embed = inner.embed_tokens
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head
        # the vocabulary projection, prepacked like the layers (its dense weight is often the
        # embedding's too, so it stays)
        head = model.lm_head
        plain_head = type(head) is torch.nn.Linear and head.bias is None
        self.head_packed = prepack(head.weight.data) if plain_head and not live else None
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            at, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    qkv=Projection([at.q_proj, at.k_proj, at.v_proj], fuse=not live),
                    o=Projection([at.o_proj], fuse=not live),
                    gate_up=Projection([mlp.gate_proj, mlp.up_proj], fuse=not live),
                    down=Projection([mlp.down_proj], fuse=not live),
                    q_norm=at.q_norm.weight if hasattr(at, "q_norm") else None,
                    k_norm=at.k_norm.weight if hasattr(at, "k_norm") else None,
                    act=mlp.act_fn,
                )
            )
        first = self.layers[0]
        self.proj_shapes = {
            "q_proj": (first.qkv.in_features, first.qkv.out_features[0]),
            "k_proj": (first.qkv.in_features, first.qkv.out_features[1]),
            "v_proj": (first.qkv.in_features, first.qkv.out_features[2]),
            "o_proj": (first.o.in_features, first.o.out_features[0]),
            "gate_proj": (first.gate_up.in_features, first.gate_up.out_features[0]),
            "up_proj": (first.gate_up.in_features, first.gate_up.out_features[1]),
            "down_proj": (first.down.in_features, first.down.out_features[0]),
        }
        self.lora_layouts: dict[str, GroupLayout] = {}
        for g, parts in GROUPS.items():
            offset, lay = 0, []
            for p in parts:
                lay.append((p, offset, offset + self.proj_shapes[p][1]))
                offset += self.proj_shapes[p][1]
            self.lora_layouts[g] = lay
        # HF computes cos/sin in fp32 from position ids, then casts: a table gives the same values.
        pos = torch.arange(max_positions, device=self.device)[None]
        probe = torch.empty(1, dtype=dtype, device=self.device)
        with torch.inference_mode():
            cos, sin = inner.rotary_emb(probe, position_ids=pos)
        half = self.head_dim // 2
        self.cos = cos[0].contiguous()  # [P, head_dim]
        self.sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1).contiguous()  # signed

    def new_cache(self, rows: int, max_capacity: int) -> KVCache:
        return KVCache(
            self.num_layers, rows, self.kv_heads, self.head_dim, self.dtype, max_capacity, device=self.device
        )

    # ---- LoRA -----------------------------------------------------------------------------------
    def stack_adapters(
        self, adapters: list[LoraAdapter], dtype: torch.dtype
    ) -> list[dict[str, StackedLora | None]]:
        return stack_adapters(adapters, self.num_layers, self.lora_layouts, dtype, self.device)

    # ---- forward --------------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # same values as HF's fp32 pow/mean/rsqrt RMSNorm, in fewer kernels
        return w * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi], bit for bit (sign flips are exact)
        return x * cos + x.roll(self.head_dim // 2, dims=-1) * sin_signed

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, hide: torch.Tensor):
        """q [n, T, nh, hd] against keys/values [n, kvh, L, hd] -> [n, T, nh * hd]. Query heads that
        share a kv head are batched against it (no repeat_kv copy); softmax runs in fp32 like HF."""
        n, t = q.shape[:2]
        nh, kvh, hd, g = self.num_heads, self.kv_heads, self.head_dim, self.groups_per_kv
        length = keys.shape[2]
        if t == 1 and self.dtype != torch.float32:
            # Decode in 16-bit: PyTorch's fused attention (what transformers runs by default) reads the
            # cache views where they lie, grouped heads included, and accumulates in fp32; two matmuls
            # copied every layer's keys and values out of the cache on every step (164 -> 106 us a layer
            # at 8 rows, SmolLM2 on CPU).
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=~hide[:, None], scale=self.scale, enable_gqa=g > 1
            )
            return out.transpose(1, 2).reshape(n, 1, nh * hd)
        qh = (q * self.scale).view(n, t, kvh, g, hd).permute(0, 2, 3, 1, 4).reshape(n, kvh, g * t, hd)
        scores = torch.matmul(qh, keys.transpose(-1, -2)).view(n, kvh, g, t, length)
        scores = scores.masked_fill(hide[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
        attn = torch.matmul(probs.view(n, kvh, g * t, length), values)  # [n, kvh, g*T, hd]
        return attn.view(n, kvh, g, t, hd).permute(0, 3, 1, 2, 4).reshape(n, t, nh * hd)

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        rows: torch.Tensor,
        contiguous_rows: bool,
        cache: KVCache,
        attn_len: int,
        lora: LoraBatch | None,
        logits_index: torch.Tensor,
    ) -> torch.Tensor:
        """One step for n sequences of T new tokens each (padded).

        ids, pos: [n, T] token ids and their absolute positions; rows: [n] cache rows (a contiguous
        ascending run when contiguous_rows, which lets attention read the cache as a view);
        attn_len: keys [0, attn_len) are read (>= every pos + 1); logits_index: [m, 2] (row, t) pairs
        whose next-token logits are returned as float32 [m, vocab].
        """
        n, t = ids.shape
        nh, kvh, hd = self.num_heads, self.kv_heads, self.head_dim
        cos = self.cos[pos].unsqueeze(2)  # [n, T, 1, hd]
        sin = self.sin[pos].unsqueeze(2)
        # [n, T, L] keys not visible
        hide = torch.arange(attn_len, device=pos.device)[None, None, :] > pos[:, :, None]
        r0 = int(rows[0]) if contiguous_rows else 0
        row_ix = rows[:, None]
        x = self.embed(ids).to(self.dtype)
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h)
            if lora is not None:
                qkv = lora.add(qkv, h, li, "qkv")
            qkv = qkv.view(n, t, nh + 2 * kvh, hd)
            if layer.q_norm is not None:
                q = self._rms(qkv[:, :, :nh], layer.q_norm)
                k = self._rms(qkv[:, :, nh : nh + kvh], layer.k_norm)
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            else:
                qk = self._rope(qkv[:, :, : nh + kvh], cos, sin)
                q, k = qk[:, :, :nh], qk[:, :, nh:]
            v = qkv[:, :, nh + kvh :]
            kc, vc = cache.k[li], cache.v[li]  # [rows, kvh, cap, hd]
            kc[row_ix, :, pos] = k
            vc[row_ix, :, pos] = v
            if contiguous_rows:
                keys, values = kc[r0 : r0 + n, :, :attn_len], vc[r0 : r0 + n, :, :attn_len]
            else:
                keys, values = kc[rows, :, :attn_len], vc[rows, :, :attn_len]
            attn = self._attend(q, keys, values, hide)
            o = layer.o(attn)
            if lora is not None:
                o = lora.add(o, attn, li, "o")
            x = x + o
            h = self._rms(x, layer.ln2)
            gu = layer.gate_up(h)
            if lora is not None:
                gu = lora.add(gu, h, li, "gate_up")
            inter = gu.shape[-1] // 2
            a = layer.act(gu[..., :inter]) * gu[..., inter:]
            d = layer.down(a)
            if lora is not None:
                d = lora.add(d, a, li, "down")
            x = x + d
        last = x[logits_index[:, 0], logits_index[:, 1]]  # [m, hidden]
        last = self._rms(last, self.final_norm)
        if self.head_packed is not None:
            return packed_linear(last, self.head_packed, None).float()
        return self.lm_head(last).float()
