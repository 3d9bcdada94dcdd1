import numpy as np
import pytest

from sknet.training.lr_schedule import learning_rates


def zoo(**overrides):
    args = dict(base_lr=0.1, total_steps=100, steps_per_epoch=10, warmup_epochs=2, warmup_start_lr=0.01,
                end_lr=0.0, poly_power=2.0)
    return learning_rates("warmup_poly", **{**args, **overrides})


def test_warmup_rises_linearly_from_the_start_lr_to_the_base_lr():
    rates = zoo()
    np.testing.assert_allclose(rates[:20], 0.01 + 0.09 * np.arange(20) / 20, rtol=1e-6)
    assert rates[20] == pytest.approx(0.1)


def test_poly_decay_follows_one_minus_t_squared_to_zero():
    rates = zoo()
    t = (np.arange(20, 100) - 20) / 80
    np.testing.assert_allclose(rates[20:], 0.1 * (1 - t) ** 2, rtol=1e-5)
    assert rates[-1] < 1e-4


def test_cosine_decays_from_base_to_end():
    rates = learning_rates("cosine", base_lr=0.05, total_steps=50, steps_per_epoch=10, end_lr=0.001)
    assert rates[0] == pytest.approx(0.05)
    assert rates[-1] == pytest.approx(0.001, abs=1e-4)
    assert np.all(np.diff(rates) <= 0)


def test_constant_schedule_after_warmup():
    rates = learning_rates("constant", base_lr=0.2, total_steps=30, steps_per_epoch=10, warmup_epochs=1)
    assert np.all(rates[10:] == np.float32(0.2)) and rates[0] == 0.0


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        learning_rates("step", base_lr=0.1, total_steps=10, steps_per_epoch=5)
