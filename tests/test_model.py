"""The model's formulas, checked exactly on small random inputs (DESIGN section 6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from r2scp_cli.model import (
    EXPERTS,
    MISSING_CODES,
    ContextAwarePurification,
    CrossModalRetrieval,
    Expert,
    GenerativeRecovery,
    ModelConfig,
    R2ScP,
    ranking_loss,
)
from r2scp_cli.losses import expert_losses, stage_one_loss

T, L, N_CAND, D = 8, 6, 5, 32
DIMS = {"audio": 12, "visual": 10, "text": 9, "text_global": 7}


def config(recovery="cmr+cap", options=False, **kw):
    return ModelConfig(dims=DIMS, segments=T, question_tokens=L, answers=11, options=options,
                       recovery=recovery, n=N_CAND, rho=0.25, d_model=D, heads=4, **kw)  # fmt: skip


def toy_batch(B=6, missing=("audio", "visual", "none", "audio", "visual", "none"), training=True, seed=0, options=False):
    g = torch.Generator().manual_seed(seed)
    codes = torch.tensor([MISSING_CODES[m] for m in missing])
    batch = {
        "missing": codes,
        "audio": torch.randn(B, T, DIMS["audio"], generator=g) * (codes != 1)[:, None, None],
        "visual": torch.randn(B, T, DIMS["visual"], generator=g) * (codes != 2)[:, None, None],
        "q_tokens": torch.randn(B, L, DIMS["text"], generator=g),
        "q_mask": torch.arange(L)[None, :] < torch.tensor([L, 3, 4, L, 2, 5])[:B, None],
        "q_global": torch.randn(B, DIMS["text_global"], generator=g),
        "answer": torch.randint(0, 4 if options else 11, (B,), generator=g),
        "recover": {},
    }
    if options:
        batch["options"] = torch.randn(B, 4, DIMS["text_global"], generator=g)
    for m, code in (("audio", 1), ("visual", 2)):
        rows = torch.nonzero(codes == code).flatten()
        # Entry tokens as make_batch sends them: distinct values, indexed per row (entry 0 is shared).
        entries = 1 + 2 * len(rows) * N_CAND
        rec = {"rows": rows, "values": torch.randn(entries, T, DIMS[m], generator=g),
               "candidates": torch.arange(len(rows) * N_CAND).reshape(len(rows), N_CAND) + 1,
               "sims": torch.rand(len(rows), N_CAND, generator=g).sort(-1, descending=True).values}  # fmt: skip
        rec["candidates"][:, -1] = 0
        if training:
            rec["negatives"] = torch.arange(len(rows) * N_CAND).reshape(len(rows), N_CAND) + 1 + len(rows) * N_CAND
            rec["real"] = torch.randn(len(rows), T, DIMS[m], generator=g)
        batch["recover"][m] = rec
    return batch


@pytest.fixture
def cap():
    torch.manual_seed(0)
    module = ContextAwarePurification(D, heads=4, k=math.ceil(0.25 * T), dropout=0.0).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        h_miss=torch.randn(3, T, D, generator=g),
        pool=torch.randn(3, N_CAND * T, D, generator=g),
        available=[torch.randn(3, T, D, generator=g)],
        q_tokens=torch.randn(3, L, D, generator=g),
        q_pad=torch.zeros(3, L, dtype=torch.bool),
        q_global=torch.randn(3, D, generator=g),
    )
    return module, inputs


def test_cap_changes_exactly_the_k_noise_positions(cap):
    module, x = cap
    with torch.no_grad():
        h_pur, info = module(**x)
    k = math.ceil(0.25 * T)
    changed = (h_pur != x["h_miss"]).any(-1)  # [B, T]
    assert changed.sum(-1).tolist() == [k, k, k]
    for b in range(3):
        assert set(torch.nonzero(changed[b]).flatten().tolist()) == set(info["omega_noise"][b].tolist())


def test_noise_positions_have_the_largest_delta(cap):
    module, x = cap
    with torch.no_grad():
        _, info = module(**x)
        anchor = module.anchor_norm((x["available"][0].mean(1) + x["q_global"]) / 2)
        delta = 1 - F.cosine_similarity(module.w_proj(x["h_miss"]), anchor[:, None], dim=-1)
    torch.testing.assert_close(info["delta"], delta)
    k = math.ceil(0.25 * T)
    for b in range(3):
        expected = set(torch.argsort(delta[b], descending=True)[:k].tolist())
        assert set(info["omega_noise"][b].tolist()) == expected


def test_injected_tokens_are_the_most_question_relevant_pool_tokens(cap):
    module, x = cap
    with torch.no_grad():
        h_pur, info = module(**x)
        scores = torch.einsum("bd,bpd->bp", module.relevance_query(x["q_global"]), module.relevance_key(module.relevance_norm(info["h_guided"])))
        relevance = torch.softmax(scores / math.sqrt(D), -1)
    torch.testing.assert_close(info["relevance"], relevance)
    k = math.ceil(0.25 * T)
    for b in range(3):
        salient = torch.argsort(relevance[b], descending=True)[:k]
        assert info["omega_salient"][b].tolist() == salient.tolist()
        for i in range(k):  # the i-th noisiest position holds the i-th most relevant guided token
            torch.testing.assert_close(h_pur[b, info["omega_noise"][b, i]], info["h_guided"][b, salient[i]])


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_injected_tokens_share_the_scale_of_the_tokens_they_join(cap, scale):
    """H_guided stays in the scale of the projected tokens (pre-norm residuals), so the injected tokens
    are neither tiny nor huge next to H_miss whatever that scale is (a LayerNorm-ed H_guided had norm
    sqrt(d) among tokens of norm 10 * sqrt(d))."""
    module, x = cap
    x = {**x, "h_miss": x["h_miss"] * scale, "pool": x["pool"] * scale}
    with torch.no_grad():
        h_pur, info = module(**x)
    injected = torch.zeros(3, T, dtype=torch.bool).scatter(1, info["omega_noise"], True)
    ratio = h_pur[injected].norm(dim=-1).mean() / h_pur[~injected].norm(dim=-1).mean()
    assert 0.5 < ratio.item() < 2.0


@pytest.mark.parametrize("options", [False, True])
def test_router_weights_sum_to_one_and_heads_have_the_right_width(options):
    torch.manual_seed(0)
    model = R2ScP(config(options=options)).eval()
    out = model(toy_batch(training=False, options=options))
    torch.testing.assert_close(out["alpha"].sum(-1), torch.ones(6))
    assert (out["alpha"] >= 0).all()
    assert out["logits"].shape == (6, 4 if options else 11)
    assert out["flags"][:, :2].tolist() == [[1, 0], [0, 1], [0, 0], [1, 0], [0, 1], [0, 0]]


def test_gradients_reach_cap_cmr_and_input_projections_in_stage_one():
    torch.manual_seed(0)
    model = R2ScP(config())
    batch = toy_batch()
    loss = stage_one_loss(model, batch, model(batch, route=False), lambda_rank=0.1, margin=0.1)
    loss.backward()
    for name in ("cap.audio.cross_attention.in_proj_weight", "cap.audio.self_attention.in_proj_weight",
                 "cap.visual.relevance_query.weight", "cap.visual.w_proj.weight", "cmr.audio.log_tau",
                 "projection.audio.linear.weight", "projection.visual.linear.weight", "projection.text.linear.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.router.parameters())  # stage 1 does not route


def test_missing_rows_ignore_their_zeroed_tokens():
    """Recovered rows take their tokens from recovery only: the placeholder values do not matter."""
    torch.manual_seed(0)
    model = R2ScP(config()).eval()
    batch = toy_batch(training=False)
    poisoned = {**batch, "audio": batch["audio"].clone()}
    poisoned["audio"][batch["missing"] == 1] = 123.0
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], model(poisoned)["logits"])


def test_ranking_loss_matches_hand_computation():
    s_real = torch.tensor([-0.5, -1.0, -2.0])
    s_retrieved = torch.tensor([-0.55, -0.5, -2.5])
    s_random = torch.tensor([-3.0, -0.45, -2.52])
    # positive: relu(0.1 - (real - retrieved)) = [0.05, 0.6, 0.0]
    # negative: relu(0.1 - (retrieved - random)) = [0.0, 0.15, 0.08]
    expected = (0.05 + 0.6 + 0.0 + 0.0 + 0.15 + 0.08) / 3
    assert ranking_loss(s_real, s_retrieved, s_random, 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_generative_baseline_mse_decreases_on_a_toy_set():
    torch.manual_seed(0)
    available = torch.randn(64, T, D)
    q_global = torch.randn(64, D)
    target = torch.tanh(available[..., :12] * 2)  # a learnable function of the available modality
    generator = GenerativeRecovery(D, 12, slots=32)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(generator(available, q_global), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("recovery", ["zero", "generative", "cmr", "cap", "cmr+cap"])
def test_every_recovery_method_runs_one_code_path(recovery):
    torch.manual_seed(0)
    model = R2ScP(config(recovery))
    batch = toy_batch()
    loss = stage_one_loss(model, batch, model(batch, route=False), 0.1, 0.1)
    assert torch.isfinite(loss)
    loss.backward()
    if recovery == "zero":
        assert model(batch)["logits"].shape == (6, 11)


def test_main_pass_score_of_a_fill_equals_a_separate_expert_pass():
    """The ranking loss reuses the main pass's expert output for s(recovered from neighbours)."""
    torch.manual_seed(0)
    model = R2ScP(config()).eval()
    batch = toy_batch()
    with torch.no_grad():
        out = model(batch, route=False)
        for m in ("audio", "visual"):
            r, rows = out["recovery"][m], batch["recover"][m]["rows"]
            truth = batch["answer"][rows]
            separate = model.expert_score(m, r["h"], r["context"]["q_global"], 1.0, r["confidence"], truth)
            reused = torch.log_softmax(out["expert_logits"][m][rows], -1).gather(1, truth[:, None]).squeeze(1)
            torch.testing.assert_close(separate, reused)


@pytest.mark.parametrize("recovery", ["zero", "generative", "cmr", "cap", "cmr+cap"])
def test_no_parameter_gets_gradient_from_two_experts(recovery):
    """DESIGN section 6: experts are pre-trained independently (a shared question projection was not)."""
    torch.manual_seed(0)
    model = R2ScP(config(recovery))
    batch = toy_batch()
    losses = expert_losses(model, batch, model(batch, route=False), lambda_rank=0.1, margin=0.1)
    owners: dict[str, list[str]] = {}
    for expert, loss in losses.items():
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and parameter.grad.abs().sum() > 0:
                owners.setdefault(name, []).append(expert)
    shared = {name: experts for name, experts in owners.items() if len(experts) > 1}
    assert shared == {}
    assert {e for experts in owners.values() for e in experts} == set(EXPERTS)  # every expert trains something


@pytest.mark.parametrize("expert", EXPERTS)
def test_one_hot_router_weight_gives_that_experts_output(expert, monkeypatch):
    """With the routed head's correction at zero, alpha = one-hot(e) makes the routed log-probabilities e's own."""
    torch.manual_seed(0)
    model = R2ScP(config()).eval()
    one_hot = torch.zeros(3)
    one_hot[EXPERTS.index(expert)] = 1.0

    def router(h, flags, confidence):
        alpha = one_hot.expand(flags.shape[0], -1)
        return torch.einsum("bm,bmd->bd", alpha, torch.stack([h[m] for m in EXPERTS], dim=1)), alpha

    monkeypatch.setattr(model.router, "forward", router)
    with torch.no_grad():
        out = model(toy_batch(training=False))
    torch.testing.assert_close(torch.log_softmax(out["logits"], -1), torch.log_softmax(out["expert_logits"][expert], -1))


@pytest.mark.parametrize("options", [False, True])
def test_untrained_router_predicts_what_the_experts_sum_predicts(options):
    """Stage 2 starts from uniform weights and a zero correction: the routed log-probabilities are the
    mean of the experts' own, so every answer is the one the experts' summed log-probabilities pick."""
    torch.manual_seed(0)
    model = R2ScP(config(options=options)).eval()
    with torch.no_grad():
        out = model(toy_batch(training=False, options=options))
    log_probs = torch.stack([torch.log_softmax(out["expert_logits"][m], -1) for m in EXPERTS])
    torch.testing.assert_close(out["alpha"], torch.full((6, 3), 1 / 3))
    torch.testing.assert_close(out["logits"], log_probs.mean(0))
    assert torch.equal(out["logits"].argmax(-1), log_probs.sum(0).argmax(-1))


def test_ranking_passes_differ_only_in_the_recovered_tokens(monkeypatch):
    """real, retrieved and random fills meet expert m with the same flag, confidence and CMR weights."""
    torch.manual_seed(0)
    model = R2ScP(config("cmr"))
    batch = toy_batch()
    seen, sims_seen = [], []
    expert_forward, cmr_forward = Expert.forward, CrossModalRetrieval.forward

    def expert_spy(self, tokens, q_global, flag, confidence, pad=None):
        if self is model.experts["audio"]:
            seen.append((flag.detach().clone(), confidence.detach().clone()))
        return expert_forward(self, tokens, q_global, flag, confidence, pad)

    def cmr_spy(self, candidates, sims):
        if self is model.cmr["audio"]:
            sims_seen.append(sims.clone())
        return cmr_forward(self, candidates, sims)

    monkeypatch.setattr(Expert, "forward", expert_spy)
    monkeypatch.setattr(CrossModalRetrieval, "forward", cmr_spy)
    expert_losses(model, batch, model(batch, route=False), lambda_rank=0.1, margin=0.1)
    rows = batch["recover"]["audio"]["rows"]
    (main_flag, main_confidence), *ranking_passes = seen
    assert len(ranking_passes) == 2  # real and random (retrieved reuses the main pass)
    for flag, confidence in ranking_passes:
        assert flag.tolist() == main_flag[rows].tolist() == [1.0] * len(rows)
        torch.testing.assert_close(confidence, main_confidence[rows])
    assert len(sims_seen) == 2 and torch.equal(sims_seen[0], sims_seen[1])


@pytest.mark.parametrize("recovery", ["cmr", "cmr+cap"])
def test_trust_scales_fills_toward_zero_fill_and_learns_from_the_random_fill(recovery):
    """t * H_fill: a trust near 0 gives zero-fill's tokens, near 1 the fill itself; the trust module
    gets gradient (from the answer loss and from the ranking loss's random fill) and only expert m's."""
    torch.manual_seed(0)
    model = R2ScP(config(recovery, trust=True)).eval()
    plain = R2ScP(config(recovery)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("trust.")})
    batch = toy_batch()
    with torch.no_grad():
        for m in ("audio", "visual"):
            model.trust[m].score[-1].bias.fill_(50.0)  # t = 1: the plain model's fill
        full, reference = model(batch, route=False), plain(batch, route=False)
        for m in ("audio", "visual"):
            torch.testing.assert_close(full["recovery"][m]["h"], reference["recovery"][m]["h"])
            model.trust[m].score[-1].bias.fill_(-50.0)  # t = 0: zero-fill
        off = model(batch, route=False)
        for m in ("audio", "visual"):
            assert off["recovery"][m]["h"].abs().max() < 1e-12
            assert off["recovery"][m]["context"]["trust"].max() < 1e-12
    model.train()
    for m in ("audio", "visual"):
        model.trust[m].score[-1].bias.data.fill_(0.0)
    losses = expert_losses(model, batch, model(batch, route=False), lambda_rank=0.1, margin=0.1)
    for m in ("audio", "visual"):
        model.zero_grad(set_to_none=True)
        losses[m].backward(retain_graph=True)
        assert model.trust[m].score[0].weight.grad.abs().sum() > 0
        other = "visual" if m == "audio" else "audio"
        assert model.trust[other].score[0].weight.grad is None


def test_noise_identification_loss_trains_caps_choice_and_only_expert_m():
    """--noise-aux: in complete rows a burst of k tokens is swapped for another row's; the loss falls
    as CAP learns to put Omega_noise there, and only expert m's parameters receive its gradient."""
    from r2scp_cli.losses import noise_identification_loss

    torch.manual_seed(0)
    model = R2ScP(config("cmr+cap"))
    batch = toy_batch(B=6, missing=("none",) * 6)
    loss = noise_identification_loss(model, batch, "audio")
    loss.backward()
    touched = {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}  # fmt: skip
    assert touched == {"projection.audio", "question_projection.audio", "context_projection.audio", "cap.audio"}
    optimizer = torch.optim.Adam(model.cap["audio"].parameters(), lr=1e-2)
    first = None
    for step in range(60):
        torch.manual_seed(step % 4)  # four fixed corruptions, visited in turn
        loss = noise_identification_loss(model, batch, "audio")
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    assert noise_identification_loss(model, batch, "audio").item() < 0.7 * first
    assert noise_identification_loss(model, toy_batch(missing=("audio",) * 6), "audio") is None  # no complete row
