"""Statistics of the report: mean and t-interval over seeds, curves interpolated at fixed points,
area under a curve, the budget needed to reach a target. Pure functions of numbers; no pandas."""
from __future__ import annotations

import functools
import math
from typing import Sequence


def student_t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4: a finite series in
    theta = atan(t / sqrt(df)), exact for integer df, so no scipy is needed)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, s * c  # odd df: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= (2 * k) / (2 * k + 1) * c * c
        return (2 / math.pi) * (theta + (total if df > 1 else 0.0))
    total, term = 0.0, 1.0  # even df: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2 + 1):
        total += term
        term *= (2 * k - 1) / (2 * k) * c * c
    return s * total


def student_t_p(t: float, df: int) -> float:
    """P(|T| >= t), the two-sided tail, computed as the tail itself: I_x(df/2, 1/2) with x = df / (df + t^2), the
    regularised incomplete beta function (Abramowitz & Stegun 26.7.1, 26.5.8). 1 - P(|T| <= t) loses everything
    below the double's rounding of 1 (~1e-16) and wrote such p-values as exactly 0."""
    t = abs(t)
    if t == 0:
        return 1.0
    if math.isinf(t):
        return 0.0
    x, y = df / (df + t * t), t * t / (df + t * t)   # y = 1 - x, each from its own ratio: neither loses digits
    return regularized_beta(df / 2, 0.5, x, y)


def regularized_beta(a: float, b: float, x: float, y: float | None = None) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1 (`y`: 1 - x, when the caller has it more precisely), by the continued
    fraction of Numerical Recipes' betacf on the side where it converges fast (Press et al., 6.4)."""
    y = 1.0 - x if y is None else y
    if x <= 0:
        return 0.0
    if y <= 0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def _beta_fraction(a: float, b: float, x: float, eps: float = 1e-16, max_terms: int = 100_000) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    return h


@functools.lru_cache(maxsize=256)  # a report asks for the same few (confidence, df) many times
def t_quantile(confidence: float, df: int) -> float:
    """The t such that P(|T| <= t) = confidence (e.g. 0.95 -> 12.706 for df=1, 2.776 for df=4), by bisection."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"t_quantile: need df >= 1 and 0 < confidence < 1, got df={df}, confidence={confidence}")
    lo, hi = 0.0, 1.0
    while student_t_two_sided(hi, df) < confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if student_t_two_sided(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean over seeds with a t-interval: {mean, lo, hi, n}. Missing values (None/NaN) are dropped; with fewer
    than two values there is no interval (lo = hi = None): one seed says nothing about seed-to-seed spread."""
    xs = [float(v) for v in values if v is not None and not _isnan(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    sd = _sd(xs, mean)
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def _sd(xs: list[float], mean: float) -> float:
    """Sample standard deviation; exactly 0 for values that agree up to float rounding (0.2 three times has a mean
    of 0.20000000000000004 and an sd of 3e-17, which a t-test would read as certainty)."""
    if max(xs) - min(xs) <= 1e-12 * max(abs(x) for x in xs):
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def t_test_p(values: Sequence[float], center: float = 0.0) -> float | None:
    """Two-sided p of a one-sample t-test of mean `center` over `values` (None/NaN dropped): the test whose 95%
    interval is mean_ci's, so p < 0.05 exactly when that interval excludes `center`. None with fewer than two
    values, and for values that all agree on something other than `center`: with no spread there is nothing to test
    against (two seeds agreeing on the same quantised held-out accuracy happens by chance), so no p, not p = 0.
    Values that all equal `center` give 1."""
    xs = [float(v) for v in values if v is not None and not _isnan(v)]
    n = len(xs)
    if n < 2:
        return None
    mean = sum(xs) / n
    sd = _sd(xs, mean)
    if sd == 0:
        return 1.0 if mean == center else None
    return student_t_p((mean - center) / (sd / math.sqrt(n)), n - 1)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values, in their order; None stays None and is not
    counted. Rejecting where the adjusted p < alpha keeps the chance of any false "different" in the family at
    most alpha, whatever the dependence between the tests: p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, running, out = len(present), 0.0, list(pvalues)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def interpolate_at(x: Sequence[float], y: Sequence[float], points: Sequence[float]) -> list[float | None]:
    """Linear interpolation of the curve (x, y) at `points`; None outside [x_min, x_max] (no extrapolation:
    a run that never got to a point has no value there). x must be increasing."""
    pairs = _clean(x, y)
    out: list[float | None] = []
    for p in points:
        out.append(_interp(pairs, p))
    return out


def area_under_curve(x: Sequence[float], y: Sequence[float], x_max: float) -> float | None:
    """Trapezoid area of y over [x_0, x_max], divided by the width: the curve's mean value over training, in
    y's own units (0.5 for an accuracy that stays at chance). None when the curve does not reach x_max."""
    pairs = _clean(x, y)
    if len(pairs) < 2 or x_max <= pairs[0][0] or pairs[-1][0] < x_max:
        return None
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
        if x0 >= x_max:
            break
        if x1 > x_max:
            y1 = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            x1 = x_max
        area += (x1 - x0) * (y0 + y1) / 2
    return area / (x_max - pairs[0][0])


def x_at_target(x: Sequence[float], y: Sequence[float], target: float) -> float | None:
    """The first x at which the curve reaches `target`, interpolated linearly between the last point below
    and the first point at or above it; None if it never does."""
    pairs = _clean(x, y)
    for i, (xi, yi) in enumerate(pairs):
        if yi >= target:
            if i == 0:
                return xi
            x0, y0 = pairs[i - 1]
            return x0 + (xi - x0) * (target - y0) / (yi - y0)
    return None


def _interp(pairs: list[tuple[float, float]], p: float) -> float | None:
    if not pairs or p < pairs[0][0] or p > pairs[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
        if x0 <= p <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    return pairs[0][1]  # a single point, asked at exactly that point


def _clean(x, y) -> list[tuple[float, float]]:
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and not _isnan(a) and not _isnan(b)]
    if any(b[0] < a[0] for a, b in zip(pairs, pairs[1:])):
        raise ValueError("curve x values must be increasing")
    return pairs


def _isnan(v) -> bool:
    try:
        return math.isnan(v)
    except TypeError:
        return False


def value_at_first_crossing(x: Sequence[float], y: Sequence[float], x_target: float) -> float | None:
    """y where the trajectory (x, y), in time order, first reaches x >= x_target, interpolated linearly between
    the two evaluations around the crossing; None if it never does. For curves whose x need not increase, such
    as reward against KL over training: "the reward an algorithm had when its KL first reached k"."""
    pts = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
           and not _isnan(a) and not _isnan(b)]
    for i, (xi, yi) in enumerate(pts):
        if xi >= x_target:
            if i == 0 or xi == pts[i - 1][0]:
                return yi
            x0, y0 = pts[i - 1]
            return y0 + (yi - y0) * (x_target - x0) / (xi - x0)
    return None
