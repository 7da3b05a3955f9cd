import copy
import math

import pytest
import torch

from pruning_course.architectures import weight_matrix
from pruning_course.distill import (
    apply_keep_masks,
    distill,
    kd_loss,
    masks_from_zeros,
    mean_kl_to_teacher,
    trainable_parameters,
)
from pruning_course.unstructured import prune_magnitude


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computed_kl():
    teacher = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    student = [[0.5, 0.0, 1.5], [1.0, 1.0, 1.0]]
    for t in (1.0, 2.0, 4.0):
        expected = t * t * sum(_kl(_softmax(a, t), _softmax(b, t)) for a, b in zip(teacher, student)) / 2
        got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature=t)
        assert float(got) == pytest.approx(expected, rel=1e-5)
    # the direction matters: KL(teacher || student), not KL(student || teacher)
    reverse = sum(_kl(_softmax(b, 1.0), _softmax(a, 1.0)) for a, b in zip(teacher, student)) / 2
    assert float(kd_loss(torch.tensor(student), torch.tensor(teacher), temperature=1.0)) != pytest.approx(reverse, rel=1e-3)


def test_kd_loss_mixes_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    kd = kd_loss(s, t, temperature=3.0)
    mixed = kd_loss(s, t, temperature=3.0, alpha=0.25, labels=labels)
    assert float(mixed) == pytest.approx(float(0.25 * kd + 0.75 * ce), rel=1e-5)
    assert float(kd_loss(s, t, alpha=0.0, labels=labels)) == pytest.approx(float(ce), rel=1e-5)
    labels[0, 0] = -100  # ignored position
    ce_ignored = torch.nn.functional.cross_entropy(s.reshape(-1, 11)[1:], labels.reshape(-1)[1:])
    assert float(kd_loss(s, t, alpha=0.0, labels=labels)) == pytest.approx(float(ce_ignored), rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_has_gradient():
    z = torch.randn(3, 4, 17, generator=torch.Generator().manual_seed(1))
    assert float(kd_loss(z, z.clone(), temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    s = (z + 0.3 * torch.randn_like(z)).requires_grad_()
    loss = kd_loss(s, z)
    assert float(loss.detach()) > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kd_loss_rejects_bad_input():
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(z, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(z, z, alpha=1.5)
    with pytest.raises(ValueError, match="pass labels"):
        kd_loss(z, z, alpha=0.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        kd_loss(z, z, alpha=0.5, labels=torch.zeros(3, dtype=torch.long))


def test_masks_from_zeros_and_apply(tiny):
    model, adapter, _ = tiny
    masks = prune_magnitude(model, adapter, 0.6)
    found = masks_from_zeros(model, adapter)
    assert set(found) == set(masks)
    assert all(torch.equal(found[n], masks[n]) for n in masks)
    for module in adapter.named_linears(model).values():  # spoil the zeros, then restore them
        weight_matrix(module).add_(1.0)
    apply_keep_masks(model, adapter, masks)
    assert all(torch.equal(weight_matrix(m) != 0, masks[n]) for n, m in adapter.named_linears(model).items())
    name = next(n for n, m in masks.items() if m.shape[0] != m.shape[1])  # non-square: the transpose is wrong
    with pytest.raises(ValueError, match="does not have"):
        apply_keep_masks(model, adapter, {"nope.weight": masks[name]})
    with pytest.raises(ValueError, match="shape"):
        apply_keep_masks(model, adapter, {name: masks[name].t()})
    with pytest.raises(ValueError, match="bool"):
        apply_keep_masks(model, adapter, {name: masks[name].float()})


def _data(vocab):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (4000,), generator=g), torch.randint(0, vocab, (1024,), generator=g)


def test_distillation_lowers_kl_and_keeps_zeros(tiny):
    teacher, adapter, tokenizer = tiny
    student = copy.deepcopy(teacher)
    masks = prune_magnitude(student, adapter, 0.7)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    train_ids, held_out = _data(len(tokenizer))
    before = mean_kl_to_teacher(student, teacher, held_out, 32)
    history = distill(student, teacher, train_ids, steps=25, seqlen=32, batch_size=4, lr=1e-3, progress=False)
    after = mean_kl_to_teacher(student, teacher, held_out, 32)
    assert len(history.loss) == len(history.seconds) == 25 and history.tokens_per_step == 128
    assert after < 0.7 * before, (before, after)
    assert history.masked_layers == len(masks)
    for name, module in adapter.named_linears(student).items():
        assert torch.equal(weight_matrix(module)[~masks[name]], torch.zeros(int((~masks[name]).sum())))
        assert (weight_matrix(module)[masks[name]] != 0).all()
    changed = any(not torch.equal(weight_matrix(m), weight_matrix(adapter.named_linears(teacher)[n]) * masks[n])
                  for n, m in adapter.named_linears(student).items())
    assert changed  # the kept weights did train
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert all(p.requires_grad for p in student.parameters())  # frozen flags restored


def test_distill_trains_only_the_linears_by_default(tokenizer):
    from pruning_course.architectures import adapter_for
    from pruning_course.testing import tiny_model

    teacher, _ = tiny_model("llama", seed=0, tokenizer=tokenizer)
    adapter = adapter_for(teacher)
    student = copy.deepcopy(teacher)
    prune_magnitude(student, adapter, 0.5)
    embed = student.model.embed_tokens.weight.clone()
    norm = student.model.norm.weight.clone()
    train_ids, _ = _data(len(tokenizer))
    history = distill(student, teacher, train_ids, steps=3, seqlen=16, batch_size=2, lr=1e-2, progress=False)
    assert torch.equal(student.model.embed_tokens.weight, embed) and torch.equal(student.model.norm.weight, norm)
    assert history.trainable_params == sum(p.numel() for p in trainable_parameters(student, adapter, "linears"))
    history = distill(student, teacher, train_ids, steps=3, seqlen=16, batch_size=2, lr=1e-2, trainable="all", progress=False)
    assert not torch.equal(student.model.norm.weight, norm)
    assert history.trainable_params == sum(p.numel() for p in student.parameters())


def test_without_masks_pruned_weights_regrow(tokenizer):
    from pruning_course.architectures import adapter_for
    from pruning_course.testing import tiny_model

    teacher, _ = tiny_model("llama", seed=0, tokenizer=tokenizer)
    adapter = adapter_for(teacher)
    student = copy.deepcopy(teacher)
    prune_magnitude(student, adapter, 0.5)
    train_ids, _ = _data(len(tokenizer))
    distill(student, teacher, train_ids, steps=2, seqlen=16, batch_size=2, lr=1e-2, keep_masks={}, progress=False)
    zeros = sum(int((weight_matrix(m) == 0).sum()) for m in adapter.named_linears(student).values())
    assert zeros < 100  # masking off: the zeros train away, so the masking in the default path is what keeps them


def test_distill_rejects_bad_input(tokenizer):
    from pruning_course.testing import tiny_model

    teacher, _ = tiny_model("llama", seed=0, tokenizer=tokenizer)
    student = copy.deepcopy(teacher)
    ids, _ = _data(len(tokenizer))
    with pytest.raises(ValueError, match="steps"):
        distill(student, teacher, ids, steps=0)
    with pytest.raises(ValueError, match="seqlen"):
        distill(student, teacher, ids, seqlen=1)
    with pytest.raises(ValueError, match="lr"):
        distill(student, teacher, ids, lr=0)
    with pytest.raises(ValueError, match="1-D"):
        distill(student, teacher, ids.view(40, 100))
    with pytest.raises(ValueError, match="fewer than one window"):
        distill(student, teacher, ids[:10], seqlen=32)
    with pytest.raises(ValueError, match="same module"):
        distill(teacher, teacher, ids)
    with pytest.raises(ValueError, match="trainable"):
        distill(student, teacher, ids, steps=1, seqlen=8, trainable="embeddings", progress=False)
    with pytest.raises(ValueError, match="alpha"):
        distill(student, teacher, ids, alpha=2.0)
    from pruning_course.testing import tiny_config
    from transformers import AutoModelForCausalLM

    wrong_vocab = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tokenizer) + 5))
    with pytest.raises(ValueError, match="vocabulary"):
        distill(student, wrong_vocab, ids, steps=1, seqlen=8, batch_size=1, progress=False)
