"""The privacy statement: what is collected, kept, released and spent, in plain language,
from a frozen policy. One text for `chorus audit statement` and the dashboard's statement page.

The yearly bound (`yearly_bound`) is computed here once, from the per-window budget and the
window length through `privacy.budget.worst_case` (OpenDP's rho to (epsilon, delta)), and every
page that states it (the statement, the dashboard's trends and statement pages) says it from
this one object."""

from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass

from chorus.server.model.calendar import WindowLength, max_windows_per_year
from chorus.server.model.policy import Policy
from chorus.server.privacy.budget import WorstCase, worst_case
from chorus.server.privacy.epsilon import Loss, Rho

__all__ = ["Section", "StatementFormat", "YearlyBound", "render_statement", "statement_sections", "yearly_bound"]


@dataclass(frozen=True, slots=True)
class YearlyBound:
    """The most that everything released over any twelve months can reveal about one person:
    the per-window budget spent in full in every window a year can touch."""

    per_window: Loss
    unit: str
    year: WorstCase

    @property
    def gaussian(self) -> bool:
        """Rho (zero-concentrated DP, the discrete Gaussian) rather than pure epsilon."""
        return isinstance(self.per_window, Rho)

    def words(self) -> str:
        """The statement's clause: "rho = 7.452 (54 x 0.138) in zero-concentrated ..."."""
        year, eps = self.year, self.per_window
        if not self.gaussian:
            return f"epsilon = {year.total} ({year.windows} x {eps})"
        return (f"rho = {year.total} ({year.windows} x {eps}) in zero-concentrated differential privacy, which is "
                f"(epsilon = {year.epsilon:.1f}, delta = {year.delta:g}) differential privacy: whatever else anyone "
                f"knows, any conclusion about you is at most e^{year.epsilon:.1f} times more (or less) likely with "
                f"your data than without it, except with probability {year.delta:g}")

    def summary(self) -> str:
        """One sentence for a page: the bound, and how it comes about."""
        year, eps = self.year, self.per_window
        bound = (f"epsilon {year.epsilon:.1f} (delta {year.delta:g})" if self.gaussian
                 else f"epsilon {year.total}")
        return (f"Over any twelve months, everything released reveals at most {bound} about any one person: "
                f"{year.windows} {self.unit}s at {eps.UNIT} {eps} each, every budget spent in full.")


def yearly_bound(per_window: Loss, length: WindowLength) -> YearlyBound:
    """The yearly bound of a per-window budget (rho or epsilon) for windows of `length`."""
    return YearlyBound(per_window, "day" if length is WindowLength.DAY else "week",
                       worst_case(per_window, max_windows_per_year(length)))


class StatementFormat(enum.StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"


Section = tuple[str, list[str], list[str]]  # heading, paragraphs, bullets


def statement_sections(window_id: str, policy: Policy) -> list[Section]:
    """The privacy statement's content, independent of its format."""
    bound = yearly_bound(policy.budget_per_window, policy.window_length)
    unit, per_year, eps = bound.unit, bound.year.windows, policy.budget_per_window
    unit_name = eps.UNIT
    noise = "OpenDP's discrete Gaussian mechanism" if bound.gaussian else "OpenDP's discrete Laplace mechanism"
    yearly_words = bound.words()
    k = policy.min_team_size
    defaults = ", ".join(f"{s} {e}" for s, e in sorted(policy.default_charge.items()))
    window_text = ("a UTC day" if unit == "day" else "an ISO week, Monday to Sunday, UTC")
    return [
        ("What is collected", [
            f"AI tools report how much you use them, as counts per {unit} ({window_text}). "
            f"This statement describes the policy frozen for window {window_id}; a policy change "
            "takes effect from the next window only. The metrics, each with the most one person "
            f"can add to any total in one {unit}:",
        ], [f"{m.name}: {m.description or 'no description'} (at most {m.max_per_user:,} per person "
            f"per {unit})" for m in policy.metrics]),
        ("How it is stored and for how long", [
            "Your usage is stored only under a pseudonym, a keyed hash made with a random key that "
            f"exists for one {unit} only. Your team comes from the company roster, as it was at your "
            f"first contribution in the {unit}.",
            f"When the {unit} ends, plus {_duration(policy.grace_seconds)} for late reports, the "
            "per-person totals are added into team totals and deleted, and the key is destroyed. "
            f"Team totals can be released for {policy.retention_windows} {unit}s; no statistic about "
            "an older window can be released.",
        ], []),
        ("What is released", [
            f"Only statistics of whole teams, only for {unit}s that have ended, only for teams of at "
            f"least {k} people, and always with random noise ({noise}): "
            "sums, counts of people using a metric, histograms over fixed buckets, and the number "
            "of active people. Averages and adoption rates are computed from those.",
            "The same statistics can be released for a group of teams: an org (a department, at any "
            "depth of the company's org chart) or the whole company, again only when it has at least "
            f"{k} people. A team smaller than {k} is never released on its own, but its people are "
            "counted in their org's and the company's numbers. When teams, orgs and the company are all "
            "released, the numbers are adjusted to add up (an org equals the sum of its teams); that "
            "adjustment uses only the released numbers and costs no privacy.",
        ], []),
        ("How much privacy each release spends", [
            f"Every team has a differential-privacy budget of {unit_name} = {eps} per {unit}; each "
            f"release spends part of it (by default: {defaults}) and nothing more is released once "
            f"it is spent. You count for one team per {unit}, so everything released about one "
            f"{unit} reveals at most {unit_name} = {eps} about you. Any twelve months touch at most "
            f"{per_year} {unit}s (a year from late in a {unit}, in a leap year), so over a year that "
            f"adds up to at most {yearly_words}: the worst case, where every budget is spent in full, "
            "whichever teams and orgs you moved between.",
            f"What a release at each level costs you: a release about your team spends its {unit_name} "
            "from your team's budget; a release about your org, or about any org above your team, or "
            f"about the whole company, spends the same {unit_name} from your team's budget too (and from "
            "every other team's below it), because you are inside those numbers. A release about "
            "an org you are not in costs you nothing. Whatever the mix of levels, everything released "
            f"about one {unit} still reveals at most {unit_name} = {eps} about you: a release that would "
            "overspend any one team's budget is refused whole.",
            f"Every release, with its noise scale, {unit_name} and the budget left, is recorded in a "
            "signed, hash-chained ledger that the privacy officer verifies independently.",
        ], []),
        ("What nobody can see", [], [
            "Any individual's usage: only noisy team statistics are ever released, to anyone.",
            "Rankings: nothing names or orders people; there is no per-person query.",
            f"Teams smaller than {k}: they are never released on their own.",
            f"Not even the operator, once a {unit} has closed: the per-person rows are deleted and the "
            "key that linked pseudonyms to people is destroyed. While a window is open, its per-person "
            "totals exist on the server under pseudonyms, protected like any other server data.",
        ]),
    ]


def render_statement(window_id: str, policy: Policy, fmt: StatementFormat) -> str:
    """The privacy statement as plain text (wrapped at 88 columns) or Markdown."""
    title = "Chorus privacy statement"
    sections = statement_sections(window_id, policy)
    if fmt is StatementFormat.MARKDOWN:
        lines = [f"# {title}", ""]
        for heading, paragraphs, bullets in sections:
            lines += [f"## {heading}", ""]
            for p in paragraphs:
                lines += [p, ""]
            if bullets:
                lines += [*(f"- {b}" for b in bullets), ""]
        return "\n".join(lines)
    lines = [title, "=" * len(title), ""]
    for heading, paragraphs, bullets in sections:
        lines += [heading, "-" * len(heading)]
        for p in paragraphs:
            lines += [*textwrap.wrap(p, 88), ""]
        for b in bullets:
            lines += textwrap.wrap(b, 88, initial_indent="  * ", subsequent_indent="    ")
        if bullets:
            lines.append("")
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"
