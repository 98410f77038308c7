"""NAR-Former: a multi-stage fusion transformer over architecture tokens (METHOD.md section 4).

The model knows tensors, not files or benchmarks. Input: a depth code (B, depth_dim), node tokens
(B, T, token_dim) ending with the end token, an optional mask (B, T) of real tokens, and for the
latency head the encoded static features (B, static_dim). Output: one number per architecture.

    depth code --Linear+ReLU--> [depth | node tokens ... end]  (B, 1+T, d)
    stage 1: 6 pre-LN self-attention blocks                     -> memory (B, 1+T, d)
    stage 2: 4 learnable queries cross-attend to memory         -> (B, 4, d)
    stage 3: 2 queries cross-attend to [memory | stage-2 tokens] -> (B, 2, d)
    stage 4: 1 query  cross-attend to [memory | stage-3 tokens]  -> (B, 1, d) -> LayerNorm -> head
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


READOUTS = ("token", "token+sum", "token+lse", "token+relusum", "relusum")
# Readouts that read the fusion stages' last token (the others skip stages 2-4 altogether).
TOKEN_READOUTS = ("token", "token+sum", "token+lse", "token+relusum")
# Relation of query token i to key token j for graph_bias: unrelated (also the depth and end
# tokens and padding), j is a source of i, j consumes i, i is j.
RELATIONS = ("none", "source", "consumer", "self")


@dataclass
class NARFormerConfig:
    token_dim: int = 192            # width of one node token: 192 for cells, 480 for networks
    depth_dim: int = 192            # width of the depth code (node count encoded with L = 96)
    d_model: int = 192              # transformer width; node tokens are projected to it if different
    n_heads: int = 6
    ffn_dim: int = 768
    depths: tuple[int, ...] = (6, 1, 1, 1)   # blocks in stage 1, then in each fusion stage
    queries: tuple[int, ...] = (4, 2, 1)     # learnable query tokens of fusion stages 2, 3, 4
    dropout: float = 0.1
    head: str = "accuracy"          # "accuracy": sigmoid on a 0..1 target; "latency": MLP head
    static_dim: int = 0             # encoded static features concatenated before the latency head
    head_hidden: int = 512          # latency MLP widths h, h/2, h/4, h/8
    # What the latency head reads. "token": the fusion stages' last token (the paper). "token+sum":
    # that token and the sum of the memory's node tokens. Latency is close to a sum of per-operator
    # costs, and a sum readout (as the NNLP graph network has) carries the network's size directly.
    # "token+lse": that token's head output plus log(sum_i exp(u_i)), u_i a per-operator MLP of
    # the memory's node tokens: the network's latency as a sum of positive per-operator costs
    # (each seen in its context), which the log target then compares in relative terms.
    # "token+relusum": that token and sum_i ReLU(W m_i + b) / 64 over the memory's node tokens m_i
    # (width ffn_dim), as the NNLP graph network pools: no LayerNorm before the sum, so a node's
    # features keep their size, and the nonlinearity comes before the sum, so the pool is a sum of
    # per-operator feature vectors. "relusum": that pool alone (no fusion stages), the graph
    # network's readout on the transformer's memory: latency as a sum of per-operator terms each
    # seen in its context, with no single whole-network token to learn the training set by heart.
    readout: str = "token"
    # Graph-aware self-attention in the stage-1 encoder: each block adds a learned bias per head
    # to the attention logit of every pair of tokens, by the pair's relation in the graph (see
    # RELATIONS). The tokens name their sources only through sin/cos position codes, which
    # attention has to learn to match; a latency depends on the neighbours (a Conv followed by a
    # Relu runs as one fused kernel), and the bias hands attention the edges directly. The biases
    # start at zero (but see the next option), so an untrained model attends as the plain one
    # does. Measured in session 10 on the latency zoo: no gain (assets/latency/README.md).
    graph_bias: bool = False
    # The bias "none" pairs start at (0: global attention, as the plain model; e.g. -4: each
    # operator attends mostly to itself and its neighbours at first, as a graph network reads).
    graph_bias_none_init: float = 0.0
    # Slot dropout (training only): each 32-value slot of a node token (op type, position,
    # sources, each attribute, each output-shape value: the first 15 x 32 values of a network
    # token) is zeroed with this probability, a whole slot at a time. The sin/cos codes give
    # every exact channel count a code of its own, which a model of ~1,600 networks can learn
    # by heart; dropping slots makes it lean on several of them at once (and on the plain
    # numbers of node_raw, which are never dropped). Session 10 found that suspicion unfounded
    # on the latency zoo (0.2: no gain; assets/latency/README.md); the option stays for reruns.
    slot_dropout: float = 0.0
    # Graph feed-forward in the stage-1 encoder (the idea of NN-Former's graph FFN): each block's
    # FFN reads a token together with the mean of its sources' tokens and the mean of its
    # consumers' tokens, as one graph-convolution layer does, so every block mixes neighbours
    # by the edges themselves and not only by softmax attention (which averages, and so cannot
    # tell how many neighbours there are or see them apart from the rest of the network).
    # Measured in session 11 on the latency zoo: no gain (assets/latency/README.md).
    graph_ffn: bool = False
    slot_count: int = 15
    slot_width: int = 32

    def __post_init__(self):
        self.depths = tuple(self.depths)
        self.queries = tuple(self.queries)
        if len(self.depths) != len(self.queries) + 1:
            raise ValueError("depths needs one entry for stage 1 and one per fusion stage")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.queries[-1] != 1:
            raise ValueError("the last fusion stage must leave exactly one token")
        if self.head not in ("accuracy", "latency"):
            raise ValueError(f"unknown head {self.head!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"unknown readout {self.readout!r}; use one of {', '.join(READOUTS)}")
        if self.readout != "token" and self.head != "latency":
            raise ValueError("the sum readout is for the latency head only")
        if not 0.0 <= self.slot_dropout < 1.0:
            raise ValueError(f"slot_dropout must be in [0, 1), got {self.slot_dropout}")
        if self.slot_dropout and self.slot_count * self.slot_width > self.token_dim:
            raise ValueError(f"{self.slot_count} slots of {self.slot_width} values do not fit "
                             f"tokens of {self.token_dim}")

    @property
    def uses_edges(self) -> bool:
        """Whether the model reads the graph's edges (a relation matrix per input)."""
        return self.graph_bias or self.graph_ffn

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"], d["queries"] = list(self.depths), list(self.queries)
        return d


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout whose masks are cheap to draw on a CPU.

    On a CPU, ``F.dropout`` draws one Bernoulli variable per element, and that costs about three
    times the float32 matrix product it follows, seven times a bfloat16 one (18 ms against 6.3 ms
    and 2.2 ms; scripts/bench_train_step.py --dropout-micro): in the paper-size training step it
    was the largest single cost after the matrix products. Here each 64-bit random word gives four 16-bit
    uniforms, so a mask costs a quarter of the draws; the keep probability is (1 - p) rounded to a
    multiple of 1/65536. Other devices keep ``F.dropout``, which is fast there.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p >= 1.0:
        return torch.zeros_like(x)
    n = x.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    u16 = words.view(torch.int16)[:n].view(x.shape)          # uniform over -32768..32767
    keep = u16 >= (round(p * 65536) - 32768)                   # P(keep) = 1 - p
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    """nn.Dropout with the CPU-friendly masks of ``dropout`` (no parameters: checkpoints unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x, context=None, key_mask=None, bias=None):
        # bias: None or (B, h, Tq, Tk) float, added to the attention logits.
        B, Tq, d = x.shape
        ctx = x if context is None else context
        Tk, h = ctx.shape[1], self.n_heads
        q = self.q(x).view(B, Tq, h, d // h).transpose(1, 2)                    # (B, h, Tq, hs)
        k, v = self.kv(ctx).view(B, Tk, 2, h, d // h).permute(2, 0, 3, 1, 4)     # 2 x (B, h, Tk, hs)
        mask = None if key_mask is None else key_mask[:, None, None, :]          # (B, 1, 1, Tk)
        dropping = self.training and self.dropout > 0
        if x.device.type == "cpu" and (dropping or torch.is_autocast_enabled("cpu")):
            # Written out on the CPU (1) under dropout, so the attention weights get the cheap
            # masks, and (2) under bfloat16 autocast, where the fused kernel is slow for sequences
            # this short: predicting all 15,625 NB201 cells with the 781 checkpoint took 1.06 s
            # fused and 0.87 s written out (float32: 2.08 s fused, 2.47 s written out, so float32
            # keeps the kernel).
            w = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5                         # (B, h, Tq, Tk)
            if bias is not None:
                w = w + bias
            if mask is not None:
                w = w.masked_fill(~mask, float("-inf"))
            y = dropout(w.softmax(dim=-1), self.dropout, dropping) @ v
        else:
            if bias is not None:
                bias = bias.to(q.dtype)
                mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, Tq, d))


class FeedForward(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float, d_in: int | None = None):
        super().__init__(nn.Linear(d_in or d, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, d))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm self-attention block."""

    def __init__(self, cfg: NARFormerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        # graph_ffn: the FFN reads [token, mean of its sources, mean of its consumers].
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout, 3 * cfg.d_model if cfg.graph_ffn else None)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, key_mask=None, bias=None, neighbours=None):
        # neighbours: None, or (from_sources, from_consumers), two (B, T, T) row-normalised
        # adjacency matrices (a row of zeros where a token has none).
        x = x + self.drop(self.attn(self.ln1(x), key_mask=key_mask, bias=bias))
        h = self.ln2(x)
        if neighbours is not None:
            h = torch.cat([h, neighbours[0] @ h, neighbours[1] @ h], dim=-1)
        return x + self.drop(self.ffn(h))


class FusionBlock(nn.Module):
    """Queries cross-attend to the memory fused with the previous stage's tokens, then an FFN."""

    def __init__(self, cfg: NARFormerConfig):
        super().__init__()
        self.ln_q, self.ln_ctx, self.ln2 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.drop = Dropout(cfg.dropout)

    def forward(self, q, context, key_mask=None):
        q = q + self.drop(self.attn(self.ln_q(q), self.ln_ctx(context), key_mask))
        return q + self.drop(self.ffn(self.ln2(q)))


class FusionStage(nn.Module):
    def __init__(self, cfg: NARFormerConfig, n_queries: int, depth: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(FusionBlock(cfg) for _ in range(depth))

    def forward(self, memory, memory_mask, previous):
        B = memory.shape[0]
        if previous is None:                     # stage 2 sees the memory alone
            context, mask = memory, memory_mask
        else:                                    # later stages: memory and previous stage fused
            context = torch.cat([memory, previous], dim=1)
            mask = None if memory_mask is None else torch.cat(
                [memory_mask, memory_mask.new_ones(B, previous.shape[1])], dim=1)
        q = self.queries.expand(B, -1, -1)
        for blk in self.blocks:
            q = blk(q, context, mask)
        return q


class NARFormer(nn.Module):
    def __init__(self, cfg: NARFormerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.depth_embed = nn.Sequential(nn.Linear(cfg.depth_dim, d), nn.ReLU())
        self.token_embed = nn.Identity() if cfg.token_dim == d else nn.Linear(cfg.token_dim, d)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depths[0]))
        if cfg.graph_bias:
            self.relation_bias = nn.ModuleList(nn.Embedding(len(RELATIONS), cfg.n_heads)
                                               for _ in range(cfg.depths[0]))
        # A readout without the fusion token builds no fusion stages (they would get no gradient).
        reads_token = cfg.readout in TOKEN_READOUTS
        self.stages = nn.ModuleList(FusionStage(cfg, m, k) for m, k in zip(cfg.queries, cfg.depths[1:])
                                    if reads_token)
        self.ln_f = nn.LayerNorm(d) if reads_token else None
        if cfg.head == "accuracy":
            self.head = nn.Linear(d, 1)
        else:
            h = cfg.head_hidden
            layers, width = [], (d if reads_token else 0) + cfg.static_dim
            if cfg.readout in ("token+relusum", "relusum"):
                self.node_pool = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.ReLU())
                width += cfg.ffn_dim
            if cfg.readout == "token+sum":
                self.ln_sum = nn.LayerNorm(d)
                width += d
            if cfg.readout == "token+lse":
                self.node_cost = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1))
                # The target's scale (log ms = mu + sd * target), set by the trainer: the summed
                # costs are in log ms, the head's output in target units.
                self.register_buffer("cost_mu", torch.zeros(()))
                self.register_buffer("cost_sd", torch.ones(()))
            for out in (h, h // 2, h // 4, h // 8):
                layers += [nn.Linear(width, out), nn.ReLU(), Dropout(cfg.dropout)]
                width = out
            self.head = nn.Sequential(*layers, nn.Linear(width, 1))
        self.apply(self._init)
        if cfg.graph_bias:
            for emb in self.relation_bias:
                nn.init.zeros_(emb.weight)
                with torch.no_grad():
                    emb.weight[RELATIONS.index("none")] = cfg.graph_bias_none_init

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, depth, nodes, mask=None, static=None, relation=None):
        # depth (B, depth_dim), nodes (B, T, token_dim), mask (B, T) bool or None,
        # relation (B, T, T) integer indices into RELATIONS (graph_bias models only)
        nodes = self._drop_slots(nodes)
        x = torch.cat([self.depth_embed(depth)[:, None], self.token_embed(nodes)], dim=1)  # (B, 1+T, d)
        key_mask = None
        if mask is not None and not bool(mask.all()):
            key_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)           # (B, 1+T)
        rel = self._relations(relation, x.shape[1])
        neighbours = self._neighbours(rel, x.dtype) if self.cfg.graph_ffn else None
        for i, blk in enumerate(self.encoder):
            bias = self.relation_bias[i](rel).permute(0, 3, 1, 2) if self.cfg.graph_bias else None  # (B, h, 1+T, 1+T)
            x = blk(x, key_mask, bias, neighbours)
        memory, prev = x, None
        for stage in self.stages:
            prev = stage(memory, key_mask, prev)                                            # (B, m, d)
        # The readout and head run in float32 even under bfloat16 autocast: bf16 keeps 8 bits of
        # mantissa, which would round the outputs of thousands of cells onto a few hundred values
        # (ties in every ranking) and quantise the differences the ranking loss learns from.
        with torch.autocast(x.device.type, enabled=False):
            return self._readout(None if prev is None else prev[:, 0].float(), memory.float(), mask, static)

    def _drop_slots(self, nodes):
        p = self.cfg.slot_dropout
        if not self.training or p <= 0.0:
            return nodes
        B, T, _ = nodes.shape
        k, w = self.cfg.slot_count, self.cfg.slot_width
        keep = (torch.rand(B, T, k, 1, device=nodes.device) >= p).to(nodes.dtype)
        coded = (nodes[..., :k * w].reshape(B, T, k, w) * keep).reshape(B, T, k * w)
        return torch.cat([coded, nodes[..., k * w:]], dim=-1)

    @staticmethod
    def _neighbours(rel, dtype):
        """Row-normalised (B, 1+T, 1+T) matrices: token i's mean over its sources, over its consumers."""
        out = []
        for name in ("source", "consumer"):
            a = (rel == RELATIONS.index(name)).to(dtype)
            out.append(a / a.sum(dim=-1, keepdim=True).clamp_min(1.0))
        return tuple(out)

    def _relations(self, relation, length):
        """(B, 1+T, 1+T) relation indices with the depth token's row and column "none", or None."""
        if not self.cfg.uses_edges:
            if relation is not None:
                raise ValueError("this model has neither graph_bias nor graph_ffn; it takes no relation matrix")
            return None
        if relation is None:
            raise ValueError("a graph_bias or graph_ffn model needs the relation matrix of its tokens")
        B, T = relation.shape[0], length - 1
        if tuple(relation.shape[1:]) != (T, T):
            raise ValueError(f"relation matrix of shape {tuple(relation.shape)} for {T} tokens")
        rel = relation.new_zeros((B, length, length), dtype=torch.long)
        rel[:, 1:, 1:] = relation.long()
        return rel

    def _readout(self, last, memory, mask, static):
        parts = [] if last is None else [self.ln_f(last)]                                  # (B, d)
        if self.cfg.head == "accuracy":
            return torch.sigmoid(self.head(parts[0])).squeeze(-1)
        if self.cfg.readout == "token+sum":
            parts.append(self._node_sum(memory, mask))
        if self.cfg.readout in ("token+relusum", "relusum"):
            parts.append(self._node_relu_sum(memory, mask))
        z = torch.cat(parts, dim=-1)
        got = 0 if static is None else static.shape[-1]
        if got != self.cfg.static_dim:
            raise ValueError(f"this latency model expects {self.cfg.static_dim} static feature values "
                             f"per architecture, got {got}")
        if static is not None:
            z = torch.cat([z, static.float()], dim=-1)
        out = self.head(z).squeeze(-1)
        if self.cfg.readout == "token+lse":
            out = out + (self._log_cost_sum(memory, mask) - self.cost_mu) / self.cost_sd
        return out

    def _log_cost_sum(self, memory, mask):
        """log sum_i exp(u_i) over the node tokens (padding out; the depth token out)."""
        u = self.node_cost(memory[:, 1:]).squeeze(-1)                                     # (B, T)
        if mask is not None:
            u = u.masked_fill(~mask, float("-inf"))
        return torch.logsumexp(u, dim=1)

    def _node_relu_sum(self, memory, mask):
        """sum_i ReLU(W m_i + b) / 64 over the node tokens of the memory (padding and depth token out)."""
        h = self.node_pool(memory[:, 1:])                                                   # (B, T, ffn)
        if mask is not None:
            h = h * mask[..., None].to(h.dtype)
        return h.sum(dim=1) / 64.0

    def _node_sum(self, memory, mask):
        """Sum of the normalised node tokens of the memory (padding left out; the depth token too)."""
        nodes = self.ln_sum(memory[:, 1:])                                                  # (B, T, d)
        if mask is not None:
            nodes = nodes * mask[..., None].to(nodes.dtype)
        # Divided by a constant, not by the length: the length is the information wanted. 64 keeps
        # the sums of networks of a few hundred operators near unit scale at the start.
        return nodes.sum(dim=1) / 64.0


def build_model(config: dict | NARFormerConfig) -> NARFormer:
    cfg = config if isinstance(config, NARFormerConfig) else NARFormerConfig(**config)
    return NARFormer(cfg)


class NARFormerEnsemble(nn.Module):
    """The mean output of several NAR-Formers trained on one split, with one target map.

    Runs that differ only in their initialisation and batch order rank the unseen architectures
    with partly independent errors; their mean cancels part of them. Members may differ in size.
    """

    def __init__(self, members: list[NARFormer]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def n_params(self) -> int:
        return sum(m.n_params() for m in self.members)

    def forward(self, depth, nodes, mask=None, static=None, relation=None):
        return torch.stack([m(depth, nodes, mask, static, relation) for m in self.members]).mean(dim=0)
