"""argparse value types shared by `sparge-generate` and `sparge-train` (standard library only: --help stays fast).
Each raises argparse.ArgumentTypeError, so a bad value gives `prog: error: argument --name: ...` and exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["finite_float", "fraction", "frames_4k_plus_1", "int_at_least", "multiple_of_16", "positive_float"]


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def frames_4k_plus_1(text: str) -> int:
    value = int_at_least(1)(text)
    if (value - 1) % 4:
        raise argparse.ArgumentTypeError(f"frames must be 4k+1 (Wan's VAE compresses time by 4), got {value}")
    return value


def multiple_of_16(text: str) -> int:
    value = int_at_least(16)(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 (VAE 8x, patch 2x), got {value}")
    return value


def fraction(text: str) -> float:
    value = _number(text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def finite_float(text: str) -> float:
    value = _number(text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
