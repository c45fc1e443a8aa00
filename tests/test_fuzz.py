"""Fuzz: broken and hostile models through ``sparc inspect``, ``sparc compile`` (default
recipe) and every pass. The only acceptable outcomes are success with a checker-valid output
or a SparcError; never another exception, a hang, or a file written outside the output path.

CI runs a bounded corpus (every mutation kind on every seed, plus the seeds cut at protobuf
field boundaries); ``python -m tests.fuzz --cases N`` runs more on demand.
"""

from __future__ import annotations

import pytest

from tests.fuzz import corpus, harness, seeds

CI_CASES = 3 * len(corpus.MUTATIONS)  # each kind once on each seed
CASE_TIMEOUT = 240.0


def _assert_no_bad_outcomes(results):
    bad = harness.bad_outcomes(results)
    report = "\n".join(
        f"{r.case_id} ({r.seed}, {r.kind}: {r.detail}) {o.operation}: {o.status} {o.error}\n{o.message}"
        for r, o in bad
    )
    assert not bad, f"{len(bad)} bad outcomes (rerun one with python -m tests.fuzz --case ID):\n{report}"


def test_mutated_models_succeed_or_raise_sparc_errors():
    results = harness.run(corpus.cases(CI_CASES, seed=0), timeout=CASE_TIMEOUT, mode="rotate")
    print(harness.summary_markdown(results))
    _assert_no_bad_outcomes(results)
    assert {r.kind for r in results} == set(corpus.MUTATIONS)
    statuses = {o.status for r in results for o in r.outcomes}
    assert {"ok", "refused"} <= statuses  # both the success and the refusal paths ran
    operations = {o.operation for r in results for o in r.outcomes}
    assert operations == set(harness.OPERATIONS)  # every pass saw mutated models


@pytest.mark.parametrize("seed_name", seeds.seed_names())
def test_truncation_at_field_boundaries_is_refused(seed_name):
    """MNIST cut at every field boundary; the transformers (400+ fields each) where each
    section starts or ends (``python -m tests.fuzz --truncations`` walks them all)."""
    cases = list(corpus.truncations(seed_name, sections_only=seed_name != "mnist"))
    results = harness.run(cases, timeout=CASE_TIMEOUT, operations=["inspect", "compile"])
    _assert_no_bad_outcomes(results)
    assert len(results) == len(cases) > 10
    assert all(o.status == "refused" for r in results for o in r.outcomes)
