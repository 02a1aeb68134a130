"""Named routing profiles: a policy and its knob, chosen by ``thrifty tune``.

A profile is a small JSON file in the profiles directory; serving exposes each
as a model name (``"model": "<profile>"``). Writing is atomic (temp file and
rename), so a server reading profiles never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from router.policy import make_policy

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ProfileError(ValueError):
    """A profile name or file is invalid."""


@dataclass(frozen=True)
class Profile:
    name: str
    policy: str = "threshold"
    knob: float = 0.7
    router_uri: str | None = None  # None: the server's default router
    allowed: list[str] | None = None
    fallback: str | None = None  # threshold policy: the model to use when none qualifies (default: most likely)
    target: dict = field(default_factory=dict)  # what tune was asked for, and what it achieved
    cascade: dict | None = None  # a router.cascade.Cascade as data (Cascade.to_dict()); None: one call per request

    def make_policy(self):
        if self.fallback and self.policy == "threshold":
            return make_policy(self.policy, self.knob, fallback=self.fallback)
        return make_policy(self.policy, self.knob)

    def make_cascade(self):
        """The profile's :class:`router.cascade.Cascade`, or None for a single-call profile."""
        from router.cascade import Cascade, CascadeError

        if self.cascade is None:
            return None
        try:
            return Cascade.from_dict(self.cascade)
        except CascadeError as exc:
            raise ProfileError(f"profile {self.name!r}: {exc}") from None


def validate_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ProfileError(f"invalid profile name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def save_profile(profile: Profile, directory: Path) -> Path:
    validate_name(profile.name)
    make_policy(profile.policy, profile.knob)  # reject unknown policies before writing
    profile.make_cascade()  # and invalid cascades
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile.name}.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{profile.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(profile), fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def load_profile(path: Path) -> Profile:
    try:
        data = json.loads(Path(path).read_text())
        profile = Profile(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ProfileError(f"{path}: not a valid profile: {exc}") from None
    validate_name(profile.name)
    make_policy(profile.policy, profile.knob)
    try:
        profile.make_cascade()
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return profile


def load_profiles(directory: Path) -> dict[str, Profile]:
    if not directory.is_dir():
        return {}
    return {p.name: p for p in (load_profile(f) for f in sorted(directory.glob("*.json")))}
