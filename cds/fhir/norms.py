"""Normative values for strength tests, applied only where they fit the patient.

A norm is specific to the test (isometric or eccentric dynamometry), the
normalisation (its unit) and, where the source gives them, to sex and age.
A norm that does not fit the patient is not applied, and the reason is kept
for the card: a value is never called normal or weak against the wrong norm.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Norm", "NormResult"]


@dataclass(frozen=True)
class Norm:
    """``predicted = intercept + per_year x age + male x (1 if male)``; ``sd`` its spread."""

    metric: str
    test: str
    unit: str
    dimension: str
    intercept: float
    per_year: float
    male: float
    sd: float
    sexes: tuple[str, ...]
    min_age: float
    max_age: float
    source: str

    def predicted(self, sex: str, age: float) -> float:
        return self.intercept + self.per_year * age + (self.male if sex == "male" else 0.0)

    def apply(
        self, value: float, dimension: str, test: str | None, sex: str | None, age: int | None
    ) -> NormResult:
        """How many SDs ``value`` lies from the prediction, or why the norm does not fit."""
        why = self._misfit(dimension, test, sex, age)
        if why is not None:
            return NormResult(None, f"norm not applied: {why}")
        assert sex is not None and age is not None
        expected = self.predicted(sex, age)
        z = round((value - expected) / self.sd, 2)
        return NormResult(
            z,
            f"{z:+.1f} SD from the predicted {expected:.2f} {self.unit} "
            f"({self.source}; {test} test, {sex}, {age} years)",
        )

    def _misfit(
        self, dimension: str, test: str | None, sex: str | None, age: int | None
    ) -> str | None:
        if dimension != self.dimension:
            return f"recorded in another unit than the norm's {self.unit}"
        if test is None:
            return f"test type not recorded (the norm is for {self.test} tests)"
        if test != self.test:
            return f"{test} test; the norm is for {self.test} tests"
        if sex not in self.sexes:
            return f"sex {'not recorded' if sex is None else sex!r}; the norm covers " + (
                " and ".join(self.sexes)
            )
        if age is None:
            return "age unknown"
        if not self.min_age <= age <= self.max_age:
            return f"age {age} outside the norm's {self.min_age:g}-{self.max_age:g} years"
        return None


@dataclass(frozen=True)
class NormResult:
    #: standard deviations from the predicted value (None: the norm does not fit)
    z: float | None
    note: str
