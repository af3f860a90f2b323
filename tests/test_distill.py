"""Recovery with the dense model as teacher (fisvd.distill, fisvd.train): the KD term against its
definition written out, its gradient against the closed form τ (p − q) / B, the mix, and the Trainer
that uses it; the grid's teacher and recovery-seed runs (names, params, report labels)."""
import copy

import pytest
import torch

from conftest import tiny_bert
from fisvd.distill import kd_loss, mixed_loss


def logits(b=5, c=3, seed=0):
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_is_the_tau_squared_kl_of_softened_distributions(tau):
    s, t = logits(seed=1), logits(seed=2)
    want = 0.0
    for b in range(s.shape[0]):
        zs = [float(v) / tau for v in s[b]]
        zt = [float(v) / tau for v in t[b]]
        ps = [pow(2.718281828459045, z) for z in zs]
        pt = [pow(2.718281828459045, z) for z in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        want += sum(q * (torch.log(torch.tensor(q)) - torch.log(torch.tensor(p))) for q, p in zip(pt, ps))
    want = tau ** 2 * float(want) / s.shape[0]
    assert float(kd_loss(s, t, tau, regression=False)) == pytest.approx(want, rel=1e-6)
    assert float(kd_loss(t, t, tau, regression=False)) == pytest.approx(0.0, abs=1e-12)


def test_kd_gradient_is_tau_times_p_minus_q_over_batch():
    tau = 3.0
    s, t = logits(seed=3).requires_grad_(), logits(seed=4)
    kd_loss(s, t, tau, regression=False).backward()
    p, q = torch.softmax(s.detach() / tau, -1), torch.softmax(t / tau, -1)
    assert torch.allclose(s.grad, tau * (p - q) / s.shape[0], atol=1e-6)


def test_regression_kd_is_the_mean_squared_difference_and_the_teacher_gets_no_gradient():
    s, t = logits(c=1, seed=5).squeeze(-1), logits(c=1, seed=6).squeeze(-1).requires_grad_()
    assert float(kd_loss(s, t, 2.0, regression=True)) == pytest.approx(float(((s - t.detach()) ** 2).mean()))
    hand_s, hand_t = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 4.0], dtype=torch.float64)
    for tau in (1.0, 4.0):                                        # (1 + 4) / 2, whatever the temperature
        assert float(kd_loss(hand_s, hand_t, tau, regression=True)) == pytest.approx(2.5)
    kd_loss(s.requires_grad_(), t, 2.0, regression=True).backward()
    assert t.grad is None


def test_mix_weights_task_and_kd_and_checks_its_inputs():
    s, t, task = logits(seed=7), logits(seed=8), torch.tensor(0.7, dtype=torch.float64)
    kd = kd_loss(s, t, 2.0, regression=False)
    assert mixed_loss(task, s, t, 0.0, 2.0, False) is task
    assert float(mixed_loss(task, s, t, 1.0, 2.0, False)) == pytest.approx(float(kd))
    assert float(mixed_loss(task, s, t, 0.25, 2.0, False)) == pytest.approx(0.75 * 0.7 + 0.25 * float(kd))
    with pytest.raises(ValueError, match="must be in"):
        mixed_loss(task, s, t, 1.5, 2.0, False)
    with pytest.raises(ValueError, match="teacher logits"):
        kd_loss(s, t[:, :2], 2.0, False)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, 0.0, False)


def test_trainer_with_a_teacher_computes_the_mixed_loss(minilm_tokenizer):
    from transformers import Trainer

    from fisvd.train import make_trainer
    tok = minilm_tokenizer
    student = tiny_bert(num_labels=2, vocab_size=tok.vocab_size, seed=1)
    teacher = tiny_bert(num_labels=2, vocab_size=tok.vocab_size, seed=2)
    feats = [dict(tok("a short sentence", "and another"), labels=i % 2) for i in range(4)]
    common = dict(epochs=1, learning_rate=1e-4, batch_size=4, weight_decay=0.0, warmup_ratio=0.0, seed=0,
                  output_dir="/tmp/fisvd-test-kd")
    plain = make_trainer(student, tok, "mrpc", feats, feats, **common)
    assert type(plain) is Trainer                       # no teacher: the plain Trainer, untouched
    assert type(make_trainer(student, tok, "mrpc", feats, feats, teacher=teacher, kd_weight=0.0, **common)) is Trainer
    tr = make_trainer(student, tok, "mrpc", feats, feats, teacher=teacher, kd_weight=0.4, kd_temperature=2.0, **common)
    batch = tr.data_collator(feats)
    student.eval()
    got = tr.compute_loss(student, dict(batch))
    with torch.no_grad():
        out = student(**batch)
        t = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    want = 0.6 * out.loss + 0.4 * kd_loss(out.logits, t, 2.0, regression=False)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # a student equal to its teacher has no KD term: w = 1 gives zero loss
    same = make_trainer(copy.deepcopy(teacher), tok, "mrpc", feats, feats, teacher=teacher, kd_weight=1.0, **common)
    assert float(same.compute_loss(same.model.eval(), dict(batch))) == pytest.approx(0.0, abs=1e-6)


# ---- the grid's recovery runs ---------------------------------------------------------------

def test_grid_recoveries_name_teacher_and_seed_runs_and_their_params():
    import json

    from fisvd import grid as G
    from fisvd.params import parse_params
    from test_grid import RAW
    raw = json.loads(json.dumps(RAW))
    raw["grid"].update(tasks=["mrpc"], seeds=[42], budgets=[20, 10], allocations=["max_fi"], factorisations=["kfac"],
                       limit={})
    raw["recover"]["cells"] = [{"allocation": "max_fi", "factorisation": "kfac", "budgets": [10]},
                               {"allocation": "max_fi", "factorisation": "kfac", "budgets": [10], "teacher": True,
                                "seeds": [42, 7]}]
    p = parse_params(raw)
    runs = G.recover_cells(p)
    assert [r.name for r in runs] == ["recover-kfac-max_fi-p10", "recover-kfac-max_fi-p10-kd-r7",
                                      "recover-kfac-max_fi-p10-kd"]
    assert [r.label for r in runs] == ["kfac", "kfac+kd", "kfac+kd"]
    stages = G.task_pipeline(p, "mrpc", 42)["stages"]
    kd7 = stages["recover-kfac-max_fi-p10-kd-r7"]
    assert kd7["cmd"].endswith("--budget 10 --teacher --seed 7")
    assert "recover.teacher" in kd7["params"]
    assert "recover.teacher" not in stages["recover-kfac-max_fi-p10"]["params"]
    assert stages["recover-kfac-max_fi-p10-kd"]["cmd"].endswith("--budget 10 --teacher")
    from fisvd.params import ParamError
    with pytest.raises(ParamError, match=r"recover\.cells\[0\]\.seeds: \[1, 1\]; give one or more distinct seeds"):
        raw["recover"]["cells"][0]["seeds"] = [1, 1]
        parse_params(raw)
