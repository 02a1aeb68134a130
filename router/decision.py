"""What a routing decision exposes: every candidate's prediction, and the choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Candidate:
    """One model considered for a prompt."""

    model: str
    p_success: float
    expected_input_tokens: float
    expected_output_tokens: float
    expected_cost: float
    acceptable: bool


@dataclass(frozen=True)
class Decision:
    """The model chosen for one prompt, and why.

    ``candidates`` are in the policy's order of preference: the chosen model
    first, then the fail-over order (acceptable models before the rest).
    ``propensity`` is the probability with which ``model`` was chosen (1.0 for
    a deterministic policy; below 1 when the server explores). ``novelty``
    says how unlike the router's training prompts the prompt is (see
    :mod:`router.novelty`); ``guarded``: the default policy sent it to the
    certificate's safe model (the best model, or a certified cheaper near-tie) for that reason.
    """

    model: str
    candidates: tuple[Candidate, ...]
    policy: str
    knob: float
    fallback: bool
    propensity: float = 1.0
    router_version: str | None = None
    explored: bool = False
    extra: dict = field(default_factory=dict, compare=False)
    novelty: float | None = None  # how unlike the router's training prompts the prompt is (1.0 = typical)
    guarded: bool = False  # sent to the certificate's safe model because of its novelty

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.model == self.model)

    @property
    def ranking(self) -> list[str]:
        return [c.model for c in self.candidates]

    def to_dict(self) -> dict:
        return asdict(self)
