"""The logistic pairwise ranking term and its place in the training config."""
import itertools
import math
import shutil

import pytest
import torch

from narformer_core.train import loss_terms, pairwise_logistic, read_log, train


def test_pairwise_logistic_matches_the_sum_over_pairs_by_hand():
    pred = torch.tensor([0.3, -0.1, 0.8, 0.2])
    y = torch.tensor([0.5, 0.1, 0.9, 0.5])     # the pair (0, 3) has equal labels and is skipped
    terms = []
    for i, j in itertools.combinations(range(4), 2):
        if y[i] == y[j]:
            continue
        s = 1.0 if y[i] > y[j] else -1.0
        terms.append(math.log1p(math.exp(-5.0 * (pred[i] - pred[j]).item() * s)))
    assert pairwise_logistic(pred, y, 5.0).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_pairwise_logistic_rewards_the_right_order_and_ignores_ties():
    y = torch.tensor([0.1, 0.5, 0.9])
    right = pairwise_logistic(torch.tensor([0.0, 0.5, 1.0]), y, 10.0)
    wrong = pairwise_logistic(torch.tensor([1.0, 0.5, 0.0]), y, 10.0)
    assert right.item() < 0.01 < 4.0 < wrong.item()
    tied = pairwise_logistic(torch.tensor([0.2, 0.7], requires_grad=True), torch.tensor([0.4, 0.4]), 10.0)
    assert tied.item() == 0.0
    tied.backward()                       # no pair to rank still gives a usable (zero) gradient


def test_loss_terms_switch_on_the_rank_loss_kind():
    g = torch.Generator().manual_seed(0)
    pred, twin, y = torch.tensor([0.2, 0.4, 0.1]), torch.tensor([0.2, 0.5, 0.1]), torch.tensor([0.3, 0.6, 0.0])
    _, r_log, _ = loss_terms(pred, twin, y, g, torch.tensor([1, 2, 0]), "logistic", 10.0)
    _, r_l1, _ = loss_terms(pred, twin, y, g, torch.tensor([1, 2, 0]), "l1")
    assert r_log.item() == pytest.approx(pairwise_logistic(pred, y, 10.0).item())
    assert r_l1.item() == pytest.approx(torch.nn.functional.l1_loss(pred - pred[[1, 2, 0]], y - y[[1, 2, 0]]).item())


def test_training_with_the_logistic_rank_loss_reduces_it(make_train_config, tmp_path):
    cfg = make_train_config(rank_loss="logistic", lambda_rank=0.5, epochs=6)
    train(cfg, tmp_path, resume=False, progress=False)
    log = read_log(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, 7))
    assert log[-1]["rank"] < log[0]["rank"]


def test_an_unknown_rank_loss_is_refused_with_the_choices(make_train_config, tmp_path):
    with pytest.raises(ValueError, match="rank_loss must be 'l1'.*'logistic', got 'hinge'"):
        train(make_train_config(rank_loss="hinge"), tmp_path, resume=False, progress=False)


def test_a_checkpoint_written_before_the_setting_existed_resumes_as_l1(tiny_run, make_train_config, tmp_path):
    for name in ("latest.pt", "metrics.jsonl"):
        shutil.copy(tiny_run[0] / name, tmp_path / name)
    ck = torch.load(tmp_path / "latest.pt", weights_only=True)
    for k in ("rank_loss", "rank_scale"):
        ck["train_config"].pop(k, None)
    torch.save(ck, tmp_path / "latest.pt")
    cfg = make_train_config()
    train(cfg, tmp_path, resume=True, progress=False)          # same run: allowed
    with pytest.raises(ValueError, match="rank_loss"):
        train(make_train_config(rank_loss="logistic"), tmp_path, resume=True, progress=False)
