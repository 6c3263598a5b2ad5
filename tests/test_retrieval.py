"""Recall against brute force, exact sharded scoring, the chance level, and the criterion maths."""
import math

import numpy as np
import torch

from m3p_fairseq.objectives import mrm_losses, vlm_loss
from m3p_fairseq.evaluation.retrieval import chance_recall, merge_shards, recall_at_k, score_pairs


def _brute(scores, cap_img, k):
    n_img, n_cap = scores.shape
    i2t = []
    for i in range(n_img):
        mine = [c for c in range(n_cap) if cap_img[c] == i]
        if not mine:
            continue
        top = sorted(range(n_cap), key=lambda c: (-scores[i, c], c))[:k]
        i2t.append(any(c in top for c in mine))
    t2i = []
    for c in range(n_cap):
        better = sum(scores[j, c] > scores[cap_img[c], c] for j in range(n_img))
        t2i.append(better < k)
    return 100 * np.mean(i2t), 100 * np.mean(t2i)


def test_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(13, 31))
    cap_img = rng.integers(0, 13, 31)
    got = recall_at_k(scores, cap_img)
    for k in (1, 5, 10):
        i2t, t2i = _brute(scores, cap_img, k)
        assert math.isclose(got[f"i2t_r{k}"], i2t) and math.isclose(got[f"t2i_r{k}"], t2i)
    assert math.isclose(got["mR"], np.mean([got[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]))


def test_perfect_scores_give_100():
    cap_img = np.repeat(np.arange(10), 2)
    scores = np.where(np.arange(10)[:, None] == cap_img[None, :], 1.0, 0.0)
    assert recall_at_k(scores, cap_img)["mR"] == 100.0


def test_chance_level_matches_random_rankings():
    cap_img = np.repeat(np.arange(20), 2)
    expected = chance_recall(cap_img, 20)["mR"]
    rng = np.random.default_rng(1)
    sims = [recall_at_k(rng.random((20, 40)), cap_img)["mR"] for _ in range(400)]
    assert abs(np.mean(sims) - expected) < 1.0


class _FakeModel(torch.nn.Module):
    """Scores a pair by a fixed function of its text and regions, to check the batching."""

    def forward(self, src_tokens, regions, region_boxes, region_padding_mask, vlm=True, **kw):
        t = (src_tokens * (src_tokens != 1)).float().sum(1)
        r = (regions.sum(-1) * (~region_padding_mask)).sum(1)
        return {"vlm_logits": torch.sin(t * 0.37 + r * 1.3)}


def test_sharded_scoring_equals_unsharded_exactly():
    rng = np.random.default_rng(2)
    captions = [torch.tensor([0] + list(rng.integers(4, 50, rng.integers(2, 8))) + [2]) for _ in range(11)]
    images = []
    for _ in range(7):
        n = int(rng.integers(1, 5))
        images.append({"features": torch.rand(n, 6), "boxes": torch.rand(n, 5), "classes": torch.zeros(n, dtype=torch.long)})
    full_ids, full = score_pairs(_FakeModel(), captions, images, pad_idx=1, batch_size=5)
    parts = [score_pairs(_FakeModel(), captions, images, pad_idx=1, batch_size=4, num_shards=3, shard_id=s)
             for s in range(3)]
    m1, _ = merge_shards([(full_ids, full)], 7, 11)
    m2, seen = merge_shards(parts, 7, 11)
    assert seen.all() and np.array_equal(m1, m2)
    # and each pair's score is the model's score of that very pair
    one = _FakeModel()(captions[4][None], images[6]["features"][None], images[6]["boxes"][None],
                       torch.zeros(1, len(images[6]["features"]), dtype=torch.bool))["vlm_logits"]
    assert math.isclose(float(m1[6, 4]), float(one), rel_tol=1e-6)


def test_mrm_and_vlm_losses_by_hand():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cls = torch.tensor([0, 2])
    mse, ce = mrm_losses(pred, logits, target, cls)
    assert math.isclose(mse.item(), (1 + 4) / 2 + (1 + 1) / 2, rel_tol=1e-6)
    p0 = math.exp(2) / (math.exp(2) + 2)
    assert math.isclose(ce.item(), -math.log(p0) - math.log(1 / 3), rel_tol=1e-6)
    v = vlm_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert math.isclose(v.item(), math.log(2) + math.log(1 + math.exp(2)), rel_tol=1e-6)


def test_hard_negatives_follow_the_dual_similarity():
    """Mined negatives: never the positive's own image, counts as asked, drawn where the dual encoder
    finds the batch's images most alike."""
    from types import SimpleNamespace

    from m3p_fairseq.criterions.m3p_downstream import M3PRetrievalCriterion

    task = SimpleNamespace(source_dictionary=SimpleNamespace(bos=lambda: 0))
    crit = M3PRetrievalCriterion(task, temperature=0.05, hard_negatives=3)
    B, group = 6, 2  # 6 positives, each followed by one random negative in the batch
    rows = torch.tensor([10, 11, 12, 13, 14, 10])  # positives 0 and 5 share an image
    idx = torch.arange(B) * group
    # caption i is close to image i and, second, to image (i + 1) % B
    text = torch.eye(B)
    image = torch.nn.functional.normalize(torch.eye(B) + 0.9 * torch.roll(torch.eye(B), 1, dims=0), dim=1)
    net_input = {"src_tokens": torch.arange(B * group)[:, None].repeat(1, 3),
                 "src_lengths": torch.full((B * group,), 3), "regions": torch.arange(B * group).float()[:, None, None],
                 "region_boxes": torch.zeros(B * group, 1, 5), "region_padding_mask": torch.zeros(B * group, 1, dtype=torch.bool)}
    labels = torch.tensor([1.0, 0.0] * B)
    torch.manual_seed(0)
    grown, new_labels = crit.add_hard_negatives(net_input, labels, idx, text, image, rows)
    added = len(new_labels) - len(labels)
    assert added == B * 3 and new_labels[len(labels):].sum() == 0
    caption_at = grown["src_tokens"][len(labels):, 0]
    image_at = grown["regions"][len(labels):, 0, 0].long()
    row_of = {int(p): int(r) for p, r in zip(idx, rows)}
    assert all(row_of[int(c)] != row_of[int(r)] for c, r in zip(caption_at, image_at))  # never a positive pair
    # the image negatives of caption i (first 2 per positive) are mostly image i+1, the most similar other one
    image_negs = image_at[: B * 2].view(B, 2) // group
    hits = sum(int(image_negs[i, k]) == (i + 1) % B for i in range(B) for k in range(2) if rows[(i + 1) % B] != rows[i])
    assert hits >= 8, image_negs
