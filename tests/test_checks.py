"""The shared argument checks: each accepts what is valid and names what was expected and what came."""

from __future__ import annotations

import math

import pytest
import torch

from common import checks


def test_check_int():
    assert checks.check_int("n", 3, low=1) == 3
    for bad, msg in [(True, "must be an int"), (2.0, "must be an int"), ("3", "must be an int"),
                     (0, ">= 1"), (11, "<= 10")]:
        with pytest.raises(ValueError, match=msg):
            checks.check_int("n", bad, low=1, high=10)


def test_check_float_and_probability():
    assert checks.check_float("lr", 1, low=0, low_open=True) == 1.0
    assert checks.check_float("x", torch.tensor(0.5)) == 0.5
    for bad, msg in [(math.nan, "finite"), (math.inf, "finite"), ("a", "real number"), (True, "real number"),
                     (0.0, "> 0"), (torch.zeros(2), "real number")]:
        with pytest.raises(ValueError, match=msg):
            checks.check_float("lr", bad, low=0, low_open=True)
    with pytest.raises(ValueError, match="<= 2"):
        checks.check_float("x", 3, high=2)
    with pytest.raises(ValueError, match="< 2"):
        checks.check_float("x", 2, high=2, high_open=True)
    assert checks.check_probability("p", 0.0) == 0.0
    assert checks.check_probability("p", 1.0, allow_one=True) == 1.0
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="p must be"):
            checks.check_probability("p", bad)


def test_check_tensor_and_images():
    x = torch.zeros(2, 3, 8, 8)
    assert checks.check_tensor("x", x, dim=(3, 4), floating=True) is x
    with pytest.raises(ValueError, match="must be a tensor, got list"):
        checks.check_tensor("x", [1, 2])
    with pytest.raises(ValueError, match="rank 2 or 3, got shape \\(2, 3, 8, 8\\)"):
        checks.check_tensor("x", x, dim=(2, 3))
    with pytest.raises(ValueError, match="floating point"):
        checks.check_tensor("x", x.long(), floating=True)
    with pytest.raises(ValueError, match="integers"):
        checks.check_tensor("y", x, integer=True)
    with pytest.raises(ValueError, match="empty batch"):
        checks.check_tensor("x", torch.zeros(0, 3))
    assert checks.check_tensor("x", torch.zeros(0, 3), nonempty=False).shape == (0, 3)
    assert checks.check_images("net", x, channels=3, min_size=8) is x
    for bad, msg in [(torch.zeros(3, 8, 8), "expects images"), (x[:, :1], "3 input channels"),
                     (torch.zeros(2, 0, 8, 8), "zero channels"), (x[..., :4], "at least 8x8"),
                     (x[:0], "empty batch"), (x.long(), "floating point")]:
        with pytest.raises(ValueError, match=msg):
            checks.check_images("net", bad, channels=3 if bad.shape[1] != 0 else None, min_size=8)


def test_check_labels_choice_and_lengths():
    y = torch.tensor([0, 2, 1])
    assert checks.check_labels("y", y, 3, n=3) is y
    for bad, msg in [(torch.tensor([0, 3]), r"\[0, 3\), got values from 0 to 3"), (torch.tensor([-1]), "from -1"),
                     (torch.tensor([0.0]), "integers"), (torch.zeros(2, 2, dtype=torch.long), "rank 1")]:
        with pytest.raises(ValueError, match=msg):
            checks.check_labels("y", bad, 3)
    with pytest.raises(ValueError, match="must hold 4 labels"):
        checks.check_labels("y", y, 3, n=4)
    assert checks.check_choice("act", "relu", ("relu", "tanh")) == "relu"
    with pytest.raises(ValueError, match="'relu', 'tanh'; got 'gelu'"):
        checks.check_choice("act", "gelu", ("relu", "tanh"))
    assert checks.check_same_length("w, b", [1, 2], (3, 4)) == 2
    with pytest.raises(ValueError, match=r"lengths \[2, 1\]"):
        checks.check_same_length("w, b", [1, 2], [3])
