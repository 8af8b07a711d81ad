"""PPO math against numbers worked out by hand (the working is in the comments)."""

import math

import pytest
import torch

from ml.rl.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_shaped_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_three_token_sequence():
    # gamma = 0.9, lambda = 0.8, rewards r = [0.1, -0.2, 1.0], values V = [0.5, 0.4, 0.3], V_3 = 0.
    # delta_2 = 1.0 + 0.9*0   - 0.3 =  0.70
    # delta_1 = -0.2 + 0.9*0.3 - 0.4 = -0.33
    # delta_0 = 0.1 + 0.9*0.4 - 0.5 = -0.04
    # A_2 = 0.70
    # A_1 = -0.33 + 0.72*0.70  = 0.174
    # A_0 = -0.04 + 0.72*0.174 = 0.08528
    # returns = A + V = [0.58528, 0.574, 1.0]
    rewards, values, mask = t([0.1, -0.2, 1.0]), t([0.5, 0.4, 0.3]), t([1.0, 1.0, 1.0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.08528, 0.174, 0.70], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.58528, 0.574, 1.0], abs=1e-6)


def test_gae_ignores_padding_after_the_response():
    # The same sequence followed by one padding position holding garbage reward/value: the padding
    # must neither bootstrap the last real token nor get an advantage of its own.
    rewards, values = t([0.1, -0.2, 1.0, 5.0]), t([0.5, 0.4, 0.3, 7.0])
    mask = t([1.0, 1.0, 1.0, 0.0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.08528, 0.174, 0.70, 0.0], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.58528, 0.574, 1.0, 0.0], abs=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    # gamma = lambda = 1: A_t = sum_{k>=t} r_k - V_t, returns = reward-to-go.
    rewards, values, mask = t([1.0, 2.0, 3.0]), t([0.5, 0.25, 4.0]), t([1.0, 1.0, 1.0])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([6.0, 5.0, 3.0])
    assert adv.tolist()[0] == pytest.approx([5.5, 4.75, -1.0])


def test_kl_shaped_rewards_put_score_on_last_real_token():
    # logp = [-1.0, -2.0, -0.5, pad], logp_ref = [-1.5, -1.0, -0.5, pad], kl_coef = 0.1, score = 2.
    # kl = logp - logp_ref = [0.5, -1.0, 0.0]; r = -0.1*kl = [-0.05, 0.1, 0.0]; last real token += 2.
    logp, ref = t([-1.0, -2.0, -0.5, -9.0]), t([-1.5, -1.0, -0.5, -1.0])
    mask = t([1.0, 1.0, 1.0, 0.0])
    rewards, kl = kl_shaped_rewards(logp, ref, torch.tensor([2.0]), mask, kl_coef=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0])
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0, 0.0])


def test_kl_shaped_rewards_batch_with_different_lengths():
    logp = t([-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0])
    ref = t([-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0])
    mask = t([1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    rewards, _ = kl_shaped_rewards(logp, ref, torch.tensor([1.0, -1.0]), mask, kl_coef=0.5)
    # Row 0: one token, kl 0, score 1 on token 0. Row 1: kl 1 per token -> -0.5 each, score -1 on token 2.
    assert rewards.tolist() == [pytest.approx([1.0, 0.0, 0.0]), pytest.approx([-0.5, -0.5, -1.5])]


def test_masked_whitening_uses_only_real_tokens():
    # Real values [1, 2, 3]: mean 2, unbiased variance ((1)^2 + 0 + (1)^2) / (3 - 1) = 1 -> [-1, 0, 1].
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # shift_mean=False keeps the mean: [1, 2, 3].
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0])


def test_policy_loss_clips_ratios_outside_the_range():
    # clip_range 0.2, old log-probs 0 so ratio = exp(new).
    # t0: ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped: no gradient)
    # t1: ratio 0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped: no gradient)
    # t2: ratio 1.1, A=+2: max(-2.2, -2.2) = -2.2  (inside the range: d/dlogp = -A*ratio = -2.2)
    # t3: ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5  (outside the range but the unclipped term is the
    #     pessimistic one, so the gradient flows: -A*ratio = -0.5)
    # loss = (-1.2 + 0.8 - 2.2 - 0.5) / 4 = -0.775; grads / 4 = [0, 0, -0.55, -0.125]
    # clipfrac = 2/4 (t0 and t1).
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = t([1.0, -1.0, 2.0, 1.0])
    out = clipped_policy_loss(new, old, adv, torch.ones(1, 4), clip_range=0.2)
    assert out.loss.item() == pytest.approx(-0.775, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(0.5)
    out.loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([0.0, 0.0, -0.55, -0.125], abs=1e-6)


def test_policy_loss_ignores_padding():
    new = torch.tensor([[0.0, 3.0]], requires_grad=True)
    out = clipped_policy_loss(new, torch.zeros(1, 2), t([1.0, 100.0]), t([1.0, 0.0]), clip_range=0.2)
    assert out.loss.item() == pytest.approx(-1.0)
    out.loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([-1.0, 0.0])


def test_value_loss_clipping():
    # clip 0.2, old V = [1.0, 1.0], new V = [1.5, 0.9], returns [2.0, 0.0].
    # t0: unclipped (1.5-2)^2 = 0.25; V clipped to 1.2 -> (1.2-2)^2 = 0.64; max 0.64 (clipped: no grad)
    # t1: 0.9 within 1 +- 0.2: both (0.9-0)^2 = 0.81
    # loss = 0.5 * (0.64 + 0.81) / 2 = 0.3625; dloss/dV1 = 0.5 * 2 * 0.9 / 2 = 0.45; clipfrac 1/2
    new = torch.tensor([[1.5, 0.9]], requires_grad=True)
    out = clipped_value_loss(new, t([1.0, 1.0]), t([2.0, 0.0]), torch.ones(1, 2), clip_range_value=0.2)
    assert out.loss.item() == pytest.approx(0.3625, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(0.5)
    out.loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([0.0, 0.45], abs=1e-6)


def test_logprobs_and_entropy_from_logits():
    logits = torch.zeros(1, 1, 4)  # uniform over 4 tokens
    assert logprobs_from_logits(logits, torch.tensor([[2]])).item() == pytest.approx(math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    # logits [log 3, 0]: p = [0.75, 0.25]
    logits = torch.tensor([[[math.log(3.0), 0.0]]])
    assert logprobs_from_logits(logits, torch.tensor([[0]])).item() == pytest.approx(math.log(0.75))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(h)
