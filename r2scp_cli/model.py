"""The R2ScP model in one file (DESIGN section 6).

Notation: d = model width, T segments, L question tokens, n retrieved candidates, k = ceil(rho * T).
A batch is a dict keyed by modality (see ``batches.make_batch``): real tokens of the available media
modalities, the question, a ``missing`` code per sample, and, for each media modality that some rows
must recover, a ``recover[m]`` dict with those rows and their retrieved candidates (the batch's
distinct bank entries once, indexed per row).

Pieces, in the order a sample meets them:
  InputProjection            raw tokens of one modality -> d
  CrossModalRetrieval (CMR)  H_miss = sum_j softmax(s/tau)_j C_j ; the pool P = all n*T candidate tokens
  ContextAwarePurification   (CAP) noise identification -> text-guided acquisition -> selective injection
  GenerativeRecovery         the baseline: learned memory slots addressed by the available modality
  Expert (E_a, E_v, E_t)     per-modality encoder, question-queried pooling, own answer head
  Router                     stage 2: alpha = softmax(g), Z = sum_m alpha_m H_m, routed answer head
                             (a correction on the alpha-weighted experts' log-probabilities)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

MEDIA = ("audio", "visual")
EXPERTS = ("audio", "visual", "text")
MISSING_CODES = {"none": 0, "audio": 1, "visual": 2, "text": 3}
OTHER = {"audio": "visual", "visual": "audio"}
LAYER_SCALE = 0.1  # initial weight of CAP's attention updates on the pool tokens (CaiT's LayerScale)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model; stored in every checkpoint."""

    dims: dict  # raw dims: audio, visual, text (tokens), text_global
    segments: int  # T
    question_tokens: int  # L
    answers: int  # size of the answer vocabulary (unused in option mode)
    options: bool  # AVQA multiple choice: score each option's text embedding
    recovery: str  # zero | generative | cmr | cap | cmr+cap
    n: int = 5
    rho: float = 0.25
    d_model: int = 128
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    memory_slots: int = 64  # generative baseline
    prototypes: int = 40  # cap without retrieval: k-means prototypes forming the pool
    trained_for: dict | None = None  # stage 1's simulated loss: p_missing, simulate, partial (a record only)
    trust: bool = False  # retrieval: a learned trust t in (0, 1) scales each fill toward zero-fill

    @property
    def trusts(self) -> bool:
        return self.trust and self.retrieves

    @property
    def k(self) -> int:
        return math.ceil(self.rho * self.segments)

    @property
    def retrieves(self) -> bool:
        return self.recovery in ("cmr", "cmr+cap")

    @property
    def purifies(self) -> bool:
        return self.recovery in ("cap", "cmr+cap")

    @property
    def reads_context(self) -> bool:
        """Recovery reads the available modality and the question (CAP's anchor, the generator's address)."""
        return self.recovery in ("generative", "cap", "cmr+cap")

    def to_dict(self) -> dict:
        return asdict(self)


def straight_through(x: torch.Tensor) -> torch.Tensor:
    """Exactly 1 in value, with the gradient of ``x``: lets hard top-k choices train their scores."""
    return 1.0 + (x - x.detach())


class InputProjection(nn.Module):
    """Raw tokens of one modality -> width d: per-feature standardisation with training statistics
    (set once before stage 1; handcrafted features mix scales from 1e-3 to 10, and a per-token
    LayerNorm let the largest features drown the informative small ones), then a linear map."""

    def __init__(self, dim_in: int, d: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim_in))
        self.register_buffer("std", torch.ones(dim_in))
        self.linear = nn.Linear(dim_in, d)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # linear(standardise(x)) with the standardisation folded into the weights: the same map, without
        # two passes over large raw inputs (3840-d candidate tokens: 13 % of a training step)
        weight = self.linear.weight / self.std
        return F.linear(x, weight, self.linear.bias - weight @ self.mean)


class CrossModalRetrieval(nn.Module):
    """CMR: blend the n retrieved candidates by their similarities."""

    def __init__(self, tau: float = 0.1):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))

    def forward(self, candidates: torch.Tensor, sims: torch.Tensor):
        """candidates [B, n, T, d], sims [B, n] -> H_miss [B, T, d], weights [B, n]."""
        weights = torch.softmax(sims / self.log_tau.exp(), dim=-1)
        h_miss = torch.einsum("bn,bntd->btd", weights, candidates)
        return h_miss, weights


class ContextAwarePurification(nn.Module):
    """CAP: replace the k least consistent positions of H_miss by the k most question-relevant pool tokens."""

    def __init__(self, d: int, heads: int, k: int, dropout: float):
        super().__init__()
        self.k = k
        self.w_proj = nn.Linear(d, d, bias=False)
        self.anchor_norm = nn.LayerNorm(d)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attention = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_scale = nn.Parameter(torch.full((d,), LAYER_SCALE))
        self.self_norm = nn.LayerNorm(d)
        self.self_attention = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.self_scale = nn.Parameter(torch.full((d,), LAYER_SCALE))
        self.relevance_norm = nn.LayerNorm(d)
        self.relevance_query = nn.Linear(d, d)
        self.relevance_key = nn.Linear(d, d)

    def identify_noise(self, h_miss: torch.Tensor, available: list[torch.Tensor], q_global: torch.Tensor,
                       eligible: torch.Tensor | None = None):  # fmt: skip
        """Step 1. g_avl = LN(mean of the available modalities and the question);
        delta_i = 1 - cos(W_proj H_miss[i], g_avl); Omega_noise = top-k delta, among the ``eligible``
        positions ([B, T] bool: under partial loss, the lost ones) when given."""
        context = torch.stack([tokens.mean(dim=1) for tokens in available] + [q_global], dim=1)
        g_avl = self.anchor_norm(context.mean(dim=1))  # [B, d]
        delta = 1.0 - F.cosine_similarity(self.w_proj(h_miss), g_avl[:, None, :], dim=-1)  # [B, T]
        ranked = delta if eligible is None else delta.masked_fill(~eligible, float("-inf"))
        omega_noise = ranked.topk(self.k, dim=-1).indices  # [B, k], largest delta first
        return delta, omega_noise

    def acquire(self, pool: torch.Tensor, q_tokens: torch.Tensor, q_pad: torch.Tensor, q_global: torch.Tensor):
        """Step 2. Pool tokens attend to the question, then to each other -> H_guided; the question's
        attention over H_guided gives each pool token a relevance; Omega_salient = top-k relevance.

        The attention blocks are pre-norm residuals with learned per-channel scales (LayerScale), so
        H_guided stays in the scale of the pool's projected tokens, the scale of the H_miss it is
        injected into. (A LayerNorm-ed H_guided put tokens of norm sqrt(d) among tokens of any other norm.)"""
        normed = self.cross_norm(pool)
        attended, _ = self.cross_attention(normed, q_tokens, q_tokens, key_padding_mask=q_pad, need_weights=False)
        x = pool + self.cross_scale * attended
        normed = self.self_norm(x)
        mixed, _ = self.self_attention(normed, normed, normed, need_weights=False)
        h_guided = x + self.self_scale * mixed  # [B, P, d]
        keys = self.relevance_key(self.relevance_norm(h_guided))
        scores = torch.einsum("bd,bpd->bp", self.relevance_query(q_global), keys)
        relevance = torch.softmax(scores / math.sqrt(h_guided.shape[-1]), dim=-1)  # [B, P]
        omega_salient = relevance.topk(self.k, dim=-1).indices  # [B, k], most relevant first
        return h_guided, relevance, omega_salient

    @staticmethod
    def inject(h_miss, h_guided, delta, omega_noise, relevance, omega_salient, eligible=None) -> torch.Tensor:
        """Step 3. H_pur = (1 - M_noise) * H_miss + M_noise * Gather(H_guided, Omega_salient):
        the i-th noisiest position receives the i-th most relevant pool token; nothing else changes
        (nor does a chosen position outside ``eligible``, when fewer than k positions are eligible)."""
        d = h_miss.shape[-1]
        index = omega_noise[..., None].expand(-1, -1, d)
        gathered = h_guided.gather(1, omega_salient[..., None].expand(-1, -1, d))  # [B, k, d]
        # Values unchanged; gradients reach the relevance and consistency scores through the choice.
        gate = straight_through(relevance.gather(1, omega_salient)) * straight_through(delta.gather(1, omega_noise))
        written = gathered * gate[..., None]
        if eligible is not None:
            written = torch.where(eligible.gather(1, omega_noise)[..., None], written, h_miss.gather(1, index))
        # Writing the gathered tokens at Omega_noise is the formula: (1 - M_noise) keeps every other position.
        return h_miss.scatter(1, index, written)

    def forward(self, h_miss, pool, available, q_tokens, q_pad, q_global, eligible=None):
        delta, omega_noise = self.identify_noise(h_miss, available, q_global, eligible)
        h_guided, relevance, omega_salient = self.acquire(pool, q_tokens, q_pad, q_global)
        h_pur = self.inject(h_miss, h_guided, delta, omega_noise, relevance, omega_salient, eligible)
        return h_pur, {"delta": delta, "omega_noise": omega_noise, "omega_salient": omega_salient,
                       "relevance": relevance, "h_guided": h_guided}  # fmt: skip


class FillTrust(nn.Module):
    """Trust in a retrieved fill: t in (0, 1) from the retrieval confidence, the question, the fill
    itself and (when recovery reads it) the available modality; the expert reads t * H_fill, so t -> 0
    is zero-fill. The ranking loss's random fill passes through it too, which teaches it to distrust
    fills that do not belong. It starts near 1 (bias 3): at first every fill passes as before."""

    def __init__(self, d: int, reads_context: bool):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 + (3 if reads_context else 2) * d, d), nn.GELU(), nn.Linear(d, 1))
        nn.init.constant_(self.score[-1].bias, 3.0)

    def forward(self, h_fill, confidence, q_global, available=None) -> torch.Tensor:
        """h_fill [B, T, d], confidence [B, 2], q_global [B, d], available [B, T, d] -> t [B]."""
        parts = [confidence, q_global, h_fill.mean(1)] + ([available.mean(1)] if available is not None else [])
        return torch.sigmoid(self.score(torch.cat(parts, dim=-1))).squeeze(-1)


class GenerativeRecovery(nn.Module):
    """The generation paradigm (Missing-AVQA style): learned memory slots, addressed per segment by the
    available modality and the question, produce pseudo tokens in the standardised input space of the
    missing modality (trained with MSE to the standardised real ones)."""

    def __init__(self, d: int, dim_out: int, slots: int):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.slot_keys = nn.Parameter(torch.randn(slots, d) / math.sqrt(d))
        self.slot_values = nn.Parameter(torch.randn(slots, dim_out) * 0.1)

    def forward(self, available: torch.Tensor, q_global: torch.Tensor) -> torch.Tensor:
        """available [B, T, d], q_global [B, d] -> pseudo standardised tokens [B, T, dim_out]."""
        query = self.query(available + q_global[:, None, :])
        address = torch.softmax(query @ self.slot_keys.T / math.sqrt(query.shape[-1]), dim=-1)
        return address @ self.slot_values


class AnswerHead(nn.Module):
    """A fixed vocabulary (MUSIC-AVQA) or per-question options (AVQA: score each option's embedding)."""

    def __init__(self, d: int, answers: int, options: bool, dim_option: int, dropout: float):
        super().__init__()
        self.options = options
        self.hidden = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout))
        if options:
            self.option_projection = nn.Linear(dim_option, d)
        else:
            self.out = nn.Linear(d, answers)

    def zero_output(self) -> None:
        """Start at zero logits (used for the routed head's correction)."""
        final = self.option_projection if self.options else self.out
        nn.init.zeros_(final.weight)
        nn.init.zeros_(final.bias)

    def forward(self, h: torch.Tensor, options: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden(h)
        if self.options:
            return torch.einsum("bd,bkd->bk", h, self.option_projection(options)) / math.sqrt(h.shape[-1])
        return self.out(h)


class Expert(nn.Module):
    """One modality's expert: a small transformer over its tokens, pooled with the question as the query
    (and, for media, the retrieval confidence), fused with the question, with its own answer head."""

    def __init__(self, cfg: ModelConfig, length: int, dim_option: int):
        super().__init__()
        d = cfg.d_model
        self.position = nn.Parameter(torch.zeros(length, d))
        self.recovered = nn.Parameter(torch.zeros(d))  # the "recovered" type embedding
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.pool_query = nn.Linear(d + 3, d)  # question + [recovered flag, mean sim, entropy]
        self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.LayerNorm(d))
        self.head = AnswerHead(d, cfg.answers, cfg.options, dim_option, cfg.dropout)

    def forward(self, tokens, q_global, flag, confidence, pad=None) -> torch.Tensor:
        """tokens [B, S, d]; flag [B] (1 = recovered); confidence [B, 2] -> H [B, d]."""
        x = tokens + self.position[: tokens.shape[1]] + flag[:, None, None] * self.recovered
        x = self.encoder(x, src_key_padding_mask=pad)
        query = self.pool_query(torch.cat([q_global, flag[:, None], confidence], dim=-1))
        scores = torch.einsum("bd,bsd->bs", query, x) / math.sqrt(x.shape[-1])
        if pad is not None:
            scores = scores.masked_fill(pad, float("-inf"))
        pooled = torch.einsum("bs,bsd->bd", torch.softmax(scores, dim=-1), x)
        return self.fuse(torch.cat([pooled, q_global], dim=-1))


class Router(nn.Module):
    """Stage 2: weights alpha over the experts from their outputs, the recovered flags and the confidence.
    They start uniform (zero last layer): untrained, the routed model predicts what the experts' sum does."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(3 * d + 3 + 4, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, 3))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)

    def forward(self, h: dict, flags: torch.Tensor, confidence: torch.Tensor):
        """h: {audio, visual, text} [B, d]; flags [B, 3]; confidence [B, 4] -> Z [B, d], alpha [B, 3]."""
        stacked = torch.stack([h[m] for m in EXPERTS], dim=1)  # [B, 3, d]
        alpha = torch.softmax(self.gate(torch.cat([stacked.flatten(1), flags, confidence], dim=-1)), dim=-1)
        return torch.einsum("bm,bmd->bd", alpha, stacked), alpha


def keep_survivors(h_miss: torch.Tensor, context: dict) -> torch.Tensor:
    """Under partial loss the recovered tokens fill the lost positions only; the clip's own surviving
    tokens keep theirs. Without a ``lost`` mask the whole modality was lost and H_miss is all of it."""
    if "lost" not in context:
        return h_miss
    return torch.where(context["lost"][..., None], h_miss, context["own"])


def rerank(candidates: torch.Tensor, sims: torch.Tensor, own: torch.Tensor, lost: torch.Tensor, n: int):
    """Partial loss: the clip's surviving segments join the query. Every stored neighbour [B, N, T, d]
    is scored by the mean of its key similarity and the cosine between its mean token and the clip's own
    over the surviving positions; the n best stay, with that score as their similarity."""
    kept = (~lost).float()  # [B, T]
    count = kept.sum(1).clamp_min(1.0)
    own_mean = (own * kept[..., None]).sum(1) / count[:, None]  # [B, d]
    candidate_mean = (candidates * kept[:, None, :, None]).sum(2) / count[:, None, None]  # [B, N, d]
    score = (sims + F.cosine_similarity(candidate_mean, own_mean[:, None], dim=-1)) / 2
    top = score.topk(n, dim=-1).indices  # [B, n]
    chosen = candidates.gather(1, top[..., None, None].expand(-1, -1, *candidates.shape[2:]))
    return chosen, score.gather(1, top)


def ranking_loss(s_real, s_retrieved, s_random, margin: float) -> torch.Tensor:
    """L_rank+ + L_rank-: real > recovered from neighbours > recovered from random bank entries,
    where s is an expert's log-probability of the true answer."""
    positive = F.relu(margin - (s_real - s_retrieved))
    negative = F.relu(margin - (s_retrieved - s_random))
    return (positive + negative).mean()


class R2ScP(nn.Module):
    """Input projections, recovery (CMR, CAP, or a baseline), three experts, router and routed head.

    Stage 1 pre-trains the experts independently (DESIGN section 6): every parameter belongs to one
    expert's path. Expert m owns its input projection, its own projection of the question's global
    vector, and, for a media m, its recovery module together with the projections of the context that
    recovery reads (the available modality and the question tokens), so no parameter receives
    gradient from two experts' losses.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, dims = cfg.d_model, cfg.dims
        self.projection = nn.ModuleDict({m: InputProjection(dims[m], d) for m in EXPERTS})
        self.question_projection = nn.ModuleDict({m: InputProjection(dims["text_global"], d) for m in EXPERTS})
        if cfg.reads_context:  # what recovering m reads of the sample: the other modality and the question
            self.context_projection = nn.ModuleDict({
                m: nn.ModuleDict({"available": InputProjection(dims[OTHER[m]], d), "text": InputProjection(dims["text"], d)})
                for m in MEDIA
            })  # fmt: skip
        if cfg.retrieves:
            self.cmr = nn.ModuleDict({m: CrossModalRetrieval() for m in MEDIA})
        if cfg.trusts:
            self.trust = nn.ModuleDict({m: FillTrust(d, cfg.reads_context) for m in MEDIA})
        if cfg.purifies:
            self.cap = nn.ModuleDict(
                {m: ContextAwarePurification(d, cfg.heads, cfg.k, cfg.dropout) for m in MEDIA}
            )
        if cfg.recovery == "cap":  # no retrieval: dataset mean tokens and k-means prototypes
            for m in MEDIA:
                self.register_buffer(f"mean_{m}", torch.zeros(cfg.segments, dims[m]))
                self.register_buffer(f"prototypes_{m}", torch.zeros(cfg.prototypes, dims[m]))
        if cfg.recovery == "generative":
            self.generator = nn.ModuleDict({m: GenerativeRecovery(d, dims[m], cfg.memory_slots) for m in MEDIA})
        dim_option = dims["text_global"]
        self.experts = nn.ModuleDict(
            {
                "audio": Expert(cfg, cfg.segments, dim_option),
                "visual": Expert(cfg, cfg.segments, dim_option),
                "text": Expert(cfg, cfg.question_tokens, dim_option),
            }
        )
        self.router = Router(d, cfg.dropout)
        self.routed_head = AnswerHead(d, cfg.answers, cfg.options, dim_option, cfg.dropout)
        self.routed_head.zero_output()  # stage 2 starts from the router-weighted experts

    # -- parameters of the two stages
    def stage_two_modules(self) -> list[nn.Module]:
        return [self.router, self.routed_head]

    def stage_one_parameters(self) -> list[nn.Parameter]:
        stage_two = {id(p) for module in self.stage_two_modules() for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in stage_two]

    def input_projections(self) -> list[tuple[InputProjection, str]]:
        """Every input projection with the raw input it standardises (audio, visual, text, text_global)."""
        pairs = [(self.projection[m], m) for m in EXPERTS]
        pairs += [(self.question_projection[m], "text_global") for m in EXPERTS]
        if self.cfg.reads_context:
            for m in MEDIA:
                pairs += [(self.context_projection[m]["available"], OTHER[m]), (self.context_projection[m]["text"], "text")]
        return pairs

    # -- recovery
    def recovery_context(self, m: str, batch: dict, rows: torch.Tensor, text_present: torch.Tensor) -> dict:
        """What recovering m may read of the rows that miss it, projected by m's own projections:
        the available modality's tokens, the question tokens and padding, the question's global vector."""
        context = {"q_pad": ~batch["q_mask"][rows],
                   "q_global": self.question_projection[m](batch["q_global"][rows]) * text_present[rows, None]}  # fmt: skip
        if self.cfg.reads_context:
            projections = self.context_projection[m]
            context["available"] = projections["available"](batch[OTHER[m]][rows])
            context["q_tokens"] = projections["text"](batch["q_tokens"][rows]) * text_present[rows, None, None]
        return context

    def recover(self, m: str, rec: dict, context: dict, candidates=None, sims=None):
        """Recovered tokens [B', T, d] for the rows of ``rec`` that miss ``m``, their confidence [B', 2],
        and the generative baseline's pseudo raw tokens (or None). With retrieval, ``candidates``
        (projected [B', n, T, d]) and ``sims`` replace the rows' neighbours (the ranking loss's
        random fill)."""
        cfg = self.cfg
        q_global = context["q_global"]
        rows = q_global.shape[0]
        confidence = q_global.new_zeros(rows, 2)
        if cfg.recovery == "zero":
            return keep_survivors(q_global.new_zeros(rows, cfg.segments, cfg.d_model), context), confidence, None
        if cfg.recovery == "generative":
            generated = self.generator[m](context["available"], q_global)
            return keep_survivors(self.projection[m].linear(generated), context), confidence, generated
        if cfg.retrieves:
            if candidates is None:  # the neighbours' projected value tokens [B', n, T, d]
                candidates = self.projection[m](rec["values"])[rec["candidates"]]
            sims = rec["sims"] if sims is None else sims
            if "lost" in context and candidates.shape[1] > cfg.n:
                candidates, sims = rerank(candidates, sims, context["own"], context["lost"], cfg.n)
            context["chosen_sims"] = sims  # the similarities CMR weighed (the ranking loss's random fill reuses them)
            h_miss, weights = self.cmr[m](candidates, sims)
            entropy = -(weights * weights.clamp_min(1e-9).log()).sum(-1) / math.log(max(weights.shape[-1], 2))
            confidence = torch.stack([sims.mean(-1), entropy], dim=-1)
            pool = candidates.flatten(1, 2) if cfg.purifies else None  # P: all n*T candidate tokens
        else:  # cap alone: the modality's mean tokens, and k-means prototypes as the pool
            h_miss = self.projection[m](getattr(self, f"mean_{m}")).expand(rows, -1, -1)
            pool = self.projection[m](getattr(self, f"prototypes_{m}")).expand(rows, -1, -1)
        h_miss = keep_survivors(h_miss, context)
        if cfg.purifies:  # under partial loss CAP may replace only lost positions
            h_miss, _ = self.cap[m](h_miss, pool, [context["available"]], context["q_tokens"], context["q_pad"], q_global,
                                    context.get("lost"))  # fmt: skip
        if cfg.trusts:  # t * H_fill on the filled positions: t -> 0 falls back to zero-fill
            trust = self.trust[m](h_miss, confidence, q_global, context.get("available"))
            scaled = h_miss * trust[:, None, None]
            h_miss = scaled if "lost" not in context else torch.where(context["lost"][..., None], scaled, h_miss)
            context["trust"] = trust
        return h_miss, confidence, None

    # -- forward
    def forward(self, batch: dict, route: bool = True, experts: tuple[str, ...] = EXPERTS) -> dict:
        """Logits of each expert (stage 1), and of the routed head with the router weights (stage 2).
        ``experts`` limits stage 1 to some experts (and the recovery they read); routing needs all."""
        if route and tuple(experts) != EXPERTS:
            raise ValueError("routing reads every expert")
        missing = batch["missing"]
        B = missing.shape[0]
        q_pad = ~batch["q_mask"]
        text_missing = missing == MISSING_CODES["text"]
        text_present = (~text_missing).float()
        q_global = {m: self.question_projection[m](batch["q_global"]) * text_present[:, None] for m in experts}
        tokens = {m: self.projection[m](batch[m]) for m in MEDIA if m in experts}
        flags = torch.zeros(B, 3, device=missing.device)
        flags[:, 2] = text_missing.float()
        confidence = {m: torch.zeros(B, 2, device=missing.device) for m in MEDIA}
        out: dict = {"recovery": {}}
        for m, rec in batch.get("recover", {}).items():
            if m not in experts:
                continue
            rows = rec["rows"]
            # A sample misses at most one media modality, so the other one is real for these rows.
            context = self.recovery_context(m, batch, rows, text_present)
            if "lost" in rec:  # partial loss: the surviving segments stay and join the query
                context.update(lost=rec["lost"], own=tokens[m][rows])
            values = self.projection[m](rec["values"]) if self.cfg.retrieves else None  # [U, T, d], once
            h_rec, conf, generated = self.recover(m, rec, context, None if values is None else values[rec["candidates"]])
            tokens[m] = tokens[m].index_put((rows,), h_rec)
            confidence[m] = confidence[m].index_put((rows,), conf)
            flags[rows, MEDIA.index(m)] = 1.0
            out["recovery"][m] = {"h": h_rec, "confidence": conf, "generated": generated, "context": context,
                                  "values": values, "trust": context.get("trust")}  # fmt: skip
        h = {m: self.experts[m](tokens[m], q_global[m], flags[:, i], confidence[m]) for i, m in enumerate(MEDIA) if m in experts}
        if "text" in experts:
            q_tokens = self.projection["text"](batch["q_tokens"]) * text_present[:, None, None]
            h["text"] = self.experts["text"](q_tokens, q_global["text"], flags[:, 2], q_tokens.new_zeros(B, 2), pad=q_pad)
        options = batch.get("options")
        out["expert_logits"] = {m: self.experts[m].head(h[m], options) for m in experts}
        out["flags"] = flags
        if route:
            z, alpha = self.router(h, flags, torch.cat([confidence["audio"], confidence["visual"]], dim=-1))
            # The routed head reads Z; its output is a correction on the router-weighted mixture of the
            # frozen experts' own log-probabilities. A head on Z alone, fitted on the experts' training
            # questions, overfit at once and fell below the plain sum of the experts (53 vs 58 % on val).
            expert_log_probs = torch.stack(
                [torch.log_softmax(out["expert_logits"][m], -1) for m in EXPERTS], dim=1
            )  # [B, 3, A]
            mixture = torch.einsum("bm,bma->ba", alpha, expert_log_probs)
            out["logits"] = mixture + self.routed_head(z, options)
            out["alpha"] = alpha
        return out

    def expert_score(self, m: str, tokens: torch.Tensor, q_global, flag: float, confidence, answer, options=None):
        """s(x): expert m's log-probability of the true answer, given projected tokens x."""
        flags = tokens.new_full((tokens.shape[0],), flag)
        h = self.experts[m](tokens, q_global, flags, confidence)
        logits = self.experts[m].head(h, options)
        return torch.log_softmax(logits, dim=-1).gather(1, answer[:, None]).squeeze(1)
