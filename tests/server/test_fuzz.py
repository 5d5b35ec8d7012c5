"""Bounded fuzzing of real servers (issue 15, "Suites"): V2 JSON, V2 binary and V1
requests, valid and mutated, against several model shapes (an MLP; INT64 + BOOL + FP16
inputs; every datatype; two dynamic dimensions; a scalar output). The rules are in
fuzzing.py: never a 5xx, never a hang, every 4xx a V2 error body, every valid request
answered exactly as onnxruntime in-process. Derandomized, so CI runs the same cases
every time; bench/fuzz/ runs the same builders, with numpy's seeded generator, for
100 000+ random cases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from server import fuzzing

GIB = 1 << 30
#: cases per model for valid and for mutated requests (all_types, 13 inputs per case,
#: costs most): 4 x (200 + 300) + 120 + 200 = 2 320 in all, about 50 s here
VALID, MUTATED = 200, 300
COUNTS = {"all_types": (120, 200)}
#: cases per model from the nightly run's numpy generator (40 % valid)
NUMPY_CASES = 300
_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def targets(start_server: object, zoo: dict[str, Path]) -> Iterator[dict[str, fuzzing.Target]]:
    servers = {
        name: start_server(zoo[name], *fuzzing.FLAGS, memory_limit=4 * GIB)  # type: ignore[operator]
        for name in fuzzing.MODELS
    }
    found = {
        name: fuzzing.Target.read(name, server.wait_ready(), zoo[name])
        for name, server in servers.items()
    }
    yield found
    for server in servers.values():
        assert server.terminate() == 0, server.output()[-2000:]
        assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # A hang fails the case: no answer within 10 s.
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.mark.parametrize("model", fuzzing.MODELS)
def test_valid_requests_get_onnxruntimes_answer(
    targets: dict[str, fuzzing.Target], client: httpx.Client, model: str
) -> None:
    target = targets[model]

    @settings(_SETTINGS, max_examples=COUNTS.get(model, (VALID, MUTATED))[0])
    @given(case=fuzzing.valid_cases(target))
    def run(case: fuzzing.Case) -> None:
        fuzzing.check(target, case, fuzzing.send(client, target, case))

    run()


@pytest.mark.parametrize("model", fuzzing.MODELS)
def test_mutated_requests_get_4xx_never_5xx(
    targets: dict[str, fuzzing.Target], client: httpx.Client, model: str
) -> None:
    target = targets[model]

    @settings(_SETTINGS, max_examples=COUNTS.get(model, (VALID, MUTATED))[1])
    @given(case=fuzzing.mutated_cases(target))
    def run(case: fuzzing.Case) -> None:
        fuzzing.check(target, case, fuzzing.send(client, target, case))

    run()


@pytest.mark.parametrize("model", fuzzing.MODELS)
def test_numpy_cases_hold_too(
    targets: dict[str, fuzzing.Target], client: httpx.Client, model: str
) -> None:
    """The nightly run's generator (fuzzing.NumpyChoices, seeded): its cases meet the
    same rules, and it builds every kind the Hypothesis strategies build."""
    target, choose = targets[model], fuzzing.NumpyChoices(fuzzing.MODELS.index(model))
    kinds: set[str] = set()
    for index in range(NUMPY_CASES):
        if index % 5 < 2:
            case = fuzzing.valid_case(choose, target)
        else:
            case = fuzzing.mutated_case(choose, target)
        kinds.add(case.mutation or case.protocol)
        fuzzing.check(target, case, fuzzing.send(client, target, case))
    protocols = {"v2-json", "v2-binary"} | ({"v1"} if fuzzing.single_input(target) else set())
    assert kinds == set(fuzzing.MUTATIONS) | protocols


def test_a_float_reduction_is_compared_at_every_input_alignment(zoo: dict[str, Path]) -> None:
    """onnxruntime's sum of the same six floats differs with the input's alignment (the
    server decodes binary inputs in place): the oracle takes any of those answers and
    still refuses one that is off by more."""
    x = np.array([[-1000.0, 41.813065, -457.51187], [287.78464, 996.4623, 125.02569]], "f4")
    target = fuzzing.Target("scalar", "", zoo["scalar"], (), ())
    answers = {float(r["total"]) for r in fuzzing.realigned_references(zoo["scalar"], {"x": x})}
    assert len(answers) > 1, answers
    want = fuzzing.reference(zoo["scalar"], {"x": x})
    assert want is not None
    for total in answers:
        got = {**want, "total": np.array(total, "f4")}
        fuzzing.compare(target, {"x": x}, got, want, json_floats=False)
    wrong = {**want, "total": np.array(max(answers) + 1e-3, "f4")}
    with pytest.raises(AssertionError):
        fuzzing.compare(target, {"x": x}, wrong, want, json_floats=False)


def test_the_suite_covered_what_it_claims() -> None:
    """Runs last in this module: the counters of every case above."""
    stats = fuzzing.STATS
    print(f"fuzz: {stats.cases} cases, codes {dict(stats.codes)}, compared {stats.compared}")
    assert stats.codes.keys() <= {200, *fuzzing.ALLOWED_4XX}
    assert stats.compared >= len(fuzzing.MODELS) * VALID // 2
    assert stats.codes[400] >= len(fuzzing.MODELS) * MUTATED // 2
