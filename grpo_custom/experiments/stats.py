"""Interval math for comparing runs across seeds: Student-t confidence intervals of a mean and of a difference.

Everything is pure Python (no scipy): the Student-t distribution function is computed from the regularized
incomplete beta function, I_x(a, b), evaluated by its continued fraction (Lentz's method), and the quantile by
bisection on it. Sources: the t distribution's CDF, P(T <= t) = 1 - I_{ν/(ν+t²)}(ν/2, 1/2) / 2 for t >= 0
(Abramowitz & Stegun 26.7.1 and 26.5.27); Welch's interval with the Welch–Satterthwaite degrees of freedom
(Welch 1947, Biometrika 34).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (A&S 26.5.8), 1/(1+ d1/(1+ d2/(1+ ...))), by the modified Lentz method.

    d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)).
    """
    tiny, epsilon = 1e-300, 1e-15

    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))  # the first term, d_1 (m = 0)
    result = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for coefficient in (even, odd):
            d = 1.0 / guard(1.0 + coefficient * d)
            c = guard(1.0 + coefficient / c)
            result *= c * d
        if abs(c * d - 1.0) < epsilon:
            return result
    raise ArithmeticError(f"the incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1.

    Raises:
        ValueError: ``a`` or ``b`` not positive, or ``x`` outside [0, 1].
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; otherwise use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (``df`` may be fractional, as in Welch's test)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(probability: float, df: float) -> float:
    """The t with P(T <= t) = ``probability`` (0 < probability < 1), by bisection to ~1e-12 relative precision.

    Example: ``student_t_quantile(0.975, 4)`` = 2.7764 (the two-sided 95% critical value for 5 samples).
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass
class Interval:
    """A mean (or a difference of means) with its two-sided confidence interval.

    ``low``/``high`` are None when the interval is undefined (fewer than two values); ``note`` then says why.
    ``df`` is the t distribution's degrees of freedom; ``method`` names the computation.
    """

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    df: float | None
    method: str
    note: str = ""

    def as_dict(self) -> dict:
        """A JSON-ready dict (``ci95`` is ``[low, high]`` or None)."""
        data = asdict(self)
        data["ci95"] = None if self.low is None else [self.low, self.high]
        del data["low"], data["high"]
        return data


def _sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` with the Student-t interval mean ± t_{(1+c)/2, n-1} · s / √n (s: Bessel-corrected std).

    With one value the mean is that value and the interval is undefined (not invented); with none, everything
    is None.
    """
    values = [float(value) for value in values]
    n = len(values)
    method = f"Student t, {confidence:.0%} two-sided"
    if n == 0:
        return Interval(0, None, None, None, None, None, method, "no values")
    mean = sum(values) / n
    if n == 1:
        return Interval(1, mean, None, None, None, None, method, "interval undefined with one seed (n=1)")
    std = _sample_std(values)
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, float(n - 1), method)


def difference_interval(values: dict[str, float], baseline: dict[str, float],
                        confidence: float = CONFIDENCE) -> tuple[Interval, str]:
    """``mean(values) - mean(baseline)`` with its interval; both map a seed to one number per run.

    When both hold the same seeds the runs are paired by seed: the interval of the per-seed differences
    (mean ± t_{n-1} · s_d / √n). Otherwise Welch's interval, (m1 - m2) ± t_ν · √(s1²/n1 + s2²/n2) with
    ν = (s1²/n1 + s2²/n2)² / ((s1²/n1)²/(n1-1) + (s2²/n2)²/(n2-1)). Returns the interval and the pairing used
    (``"paired by seed"`` or ``"unpaired (Welch)"``).
    """
    if values and set(values) == set(baseline):
        seeds = sorted(values)
        differences = [values[seed] - baseline[seed] for seed in seeds]
        interval = mean_interval(differences, confidence)
        interval.method = f"paired by seed ({', '.join(seeds)}): " + interval.method
        return interval, "paired by seed"
    first, second = list(values.values()), list(baseline.values())
    method = f"unpaired (Welch), {confidence:.0%} two-sided"
    if not first or not second:
        return Interval(0, None, None, None, None, None, method, "no values in one of the two variants"), "unpaired (Welch)"
    difference = sum(first) / len(first) - sum(second) / len(second)
    if len(first) < 2 or len(second) < 2:
        return (Interval(len(first) + len(second), difference, None, None, None, None, method,
                         "interval undefined: a variant has fewer than two seeds"), "unpaired (Welch)")
    v1, v2 = _sample_std(first) ** 2 / len(first), _sample_std(second) ** 2 / len(second)
    se = math.sqrt(v1 + v2)
    if se == 0.0:
        return (Interval(len(first) + len(second), difference, 0.0, difference, difference, None, method,
                         "zero spread in both variants"), "unpaired (Welch)")
    df = (v1 + v2) ** 2 / (v1 ** 2 / (len(first) - 1) + v2 ** 2 / (len(second) - 1))
    half = student_t_quantile(0.5 + confidence / 2.0, df) * se
    return Interval(len(first) + len(second), difference, se, difference - half, difference + half, df, method), \
        "unpaired (Welch)"
