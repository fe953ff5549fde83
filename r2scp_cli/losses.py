"""The stage-1 objective (DESIGN section 6): each expert's own loss, summed.

Expert m's loss is its answer cross-entropy plus, for retrieval, the ranking loss that orders its
score with the real tokens, the retrieved fill and a random fill; the generative baseline's MSE; and,
when asked, CAP's noise identification and the trust's match loss. No parameter receives gradient
from two experts' losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import EXPERTS, MEDIA, MISSING_CODES, OTHER, R2ScP, ranking_loss


def expert_losses(model: R2ScP, batch: dict, out: dict, lambda_rank: float, margin: float,
                  noise_aux: float = 0.0, trust_match: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Each expert's own stage-1 loss: its cross-entropy, + lambda * the ranking loss of its retrieved
    fills, + the MSE of the generative baseline's pseudo tokens to the real ones (+ noise_aux * CAP's
    noise-identification loss) (+ trust_match * the binary cross-entropy of the trust, retrieved and random
    fills alike, against the share of the fill's entries that resemble the truth: batches.MATCH_SHARE).
    The experts are pre-trained independently: every parameter receives gradient from one of these
    losses only."""
    answer = batch["answer"]
    losses = {m: F.cross_entropy(out["expert_logits"][m], answer) for m in EXPERTS}
    if noise_aux > 0 and model.cfg.purifies:
        for m in MEDIA:
            found = noise_identification_loss(model, batch, m)
            if found is not None:
                losses[m] = losses[m] + noise_aux * found
    for m, rec in batch["recover"].items():
        r = out["recovery"][m]
        if r["generated"] is not None:
            losses[m] = losses[m] + F.mse_loss(r["generated"], model.projection[m].standardise(rec["real"]))
        random_trust = None
        if model.cfg.retrieves and lambda_rank > 0:
            rows = rec["rows"]
            truth = answer[rows]
            options = batch["options"][rows] if "options" in batch else None
            # The three passes differ only in the recovered tokens (DESIGN section 6): the same "recovered"
            # flag, the same confidence inputs (the retrieved fill's) and, for the random fill, the same
            # CMR weights. With flag 0 and confidence 0 for real tokens, flag 1 and confidence 1 for random
            # ones, the expert could order the three scores from the side channels alone.
            confidence = r["confidence"].detach()
            q_global = r["context"]["q_global"]
            real = model.projection[m](rec["real"])
            s_real = model.expert_score(m, real, q_global, 1.0, confidence, truth, options)
            # The main pass already ran expert m on these rows' retrieved fill: reuse its score.
            log_probs = torch.log_softmax(out["expert_logits"][m][rows], dim=-1)
            s_retrieved = log_probs.gather(1, truth[:, None]).squeeze(1)
            random = r["values"][rec["negatives"]]  # the batch's entries were projected once by the main pass
            h_random, _, _ = model.recover(m, rec, r["context"], candidates=random, sims=r["context"]["chosen_sims"])
            s_random = model.expert_score(m, h_random, q_global, 1.0, confidence, truth, options)
            losses[m] = losses[m] + lambda_rank * ranking_loss(s_real, s_retrieved, s_random, margin)
            random_trust = r["context"].get("trust")  # the random fill's (recover wrote it last)
        if trust_match > 0 and r["trust"] is not None:
            losses[m] = losses[m] + trust_match * trust_match_loss(r["trust"], random_trust, rec)
    return losses


def trust_match_loss(trust: torch.Tensor, random_trust: torch.Tensor | None, rec: dict) -> torch.Tensor:
    """The trust's binary cross-entropy against the share of a fill's entries that resemble the truth
    (``candidates_match``, and ``negatives_match`` for the ranking loss's random fill when it ran);
    rows without a target (their video has no bank entry) are left out."""
    trusts, targets = [trust], [rec["candidates_match"].mean(1)]
    if random_trust is not None:
        trusts.append(random_trust)
        targets.append(rec["negatives_match"].mean(1))
    trusts, targets = torch.cat(trusts), torch.cat(targets)
    known = torch.isfinite(targets)
    return F.binary_cross_entropy(trusts[known], targets[known]) if known.any() else trusts.sum() * 0.0


def noise_identification_loss(model: R2ScP, batch: dict, m: str, tau: float = 0.1) -> torch.Tensor | None:
    """CAP m learns where a present modality is corrupted (DESIGN section 7, degraded): in the batch's
    complete rows, a burst of k of m's projected tokens is swapped for another clip's tokens at the same
    positions; Omega_noise should choose them. Loss: -log of the softmax(delta / tau) mass on them."""
    rows = torch.nonzero(batch["missing"] == MISSING_CODES["none"]).squeeze(1)
    k, T = model.cfg.k, model.cfg.segments
    if len(rows) < 2 or k >= T:
        return None
    raw = batch[m][rows]
    donor = torch.roll(torch.arange(len(rows), device=raw.device), 1)
    usable = ~(raw == raw[donor]).all(dim=2).all(dim=1)  # a donor of the same clip corrupts nothing
    if not usable.any():
        return None
    start = torch.randint(0, T - k + 1, (len(rows),), device=raw.device)
    corrupt = torch.zeros(len(rows), T, dtype=torch.bool, device=raw.device)
    corrupt.scatter_(1, start[:, None] + torch.arange(k, device=raw.device), True)
    h = model.projection[m](raw)
    h = torch.where(corrupt[..., None], h[donor], h)
    available = model.context_projection[m]["available"](batch[OTHER[m]][rows])
    q_global = model.question_projection[m](batch["q_global"][rows])
    delta, _ = model.cap[m].identify_noise(h, [available], q_global)
    log_p = torch.log_softmax(delta / tau, dim=-1).masked_fill(~corrupt, float("-inf"))
    return -torch.logsumexp(log_p, dim=-1)[usable].mean()


def stage_one_loss(model: R2ScP, batch: dict, out: dict, lambda_rank: float, margin: float,
                   noise_aux: float = 0.0, trust_match: float = 0.0) -> torch.Tensor:  # fmt: skip
    """The sum of the experts' own losses."""
    return sum(expert_losses(model, batch, out, lambda_rank, margin, noise_aux, trust_match).values())
