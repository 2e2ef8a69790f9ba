"""The bisection policy on recorded verdict sequences: which stacks it tests, in which order, what it names."""
import pytest

from harness.fleet.bisect import (BAD, GOOD, INFRA, MORE, STATUS_EXIT, bisect_json, confidence, drive, next_action,
                            step_state, summary)

P, F, I = "pass", "finding", "infra-error"


def replay(n, repeats, recorded):
    """Drive the policy with recorded verdicts: recorded[upto] is the sequence that stack's runs gave."""
    left = {u: list(vs) for u, vs in recorded.items()}

    def run_one(upto):
        assert left.get(upto), f"the policy asked for a run of upto={upto} that was not recorded"
        return {"verdict": left[upto].pop(0)}
    runs, outcome = drive(n, repeats, run_one)
    assert not any(left.values()), f"recorded runs the policy never asked for: {left}"
    order = []
    for r in runs:
        if r["upto"] not in order:
            order.append(r["upto"])
    return order, outcome


@pytest.mark.parametrize("verdicts,repeats,state", [
    ([P, P, P], 3, GOOD), ([P, P], 3, MORE), ([P, F], 3, BAD), ([F], 3, BAD), ([], 1, MORE),
    ([I, P], 1, GOOD), ([I, I], 3, INFRA), ([P, I, P, I, P], 3, GOOD), ([I, F], 3, BAD),
    (["input-error", "input-error"], 1, INFRA),
])
def test_step_state(verdicts, repeats, state):
    assert step_state(verdicts, repeats) == state


# name, series length, repeats, recorded verdicts per upto, expected test order, status, first bad.  The first bad
# step's verdicts end with its R confirmation runs (after the search has named it).
TABLE = [
    ("clean series", 3, 2, {0: [P, P], 3: [P, P]}, [0, 3], "clean", None),
    ("bad last patch", 4, 1, {0: [P], 4: [F, F], 2: [P], 3: [P]}, [0, 4, 2, 3], "first-bad", 4),
    ("bad middle patch", 5, 1, {0: [P], 5: [F], 2: [P], 3: [F, F]}, [0, 5, 2, 3], "first-bad", 3),
    ("bad first patch", 4, 1, {0: [P], 4: [F], 2: [F], 1: [F, F]}, [0, 4, 2, 1], "first-bad", 1),
    ("flaky bad patch, p=0.5, R=3", 4, 3, {0: [P, P, P], 4: [P, F], 2: [P, P, P], 3: [P, F, P, F, F]},
     [0, 4, 2, 3], "first-bad", 3),
    ("base bad", 4, 3, {0: [P, F]}, [0], "base-bad", None),
    ("base infra", 4, 3, {0: [I, I]}, [0], "infra", None),
    ("infra retried once, then fine", 2, 1, {0: [P], 2: [I, F, P], 1: [P]}, [0, 2, 1], "first-bad", 2),
    ("infra step: searched around it, answer left a range", 4, 1, {0: [P], 4: [F], 2: [I, I], 1: [P], 3: [F]},
     [0, 4, 2, 1, 3], "infra", None),
    ("infra step: searched around it, answer still exact", 4, 1, {0: [P], 4: [F, F], 2: [I, I], 1: [P], 3: [P]},
     [0, 4, 2, 1, 3], "first-bad", 4),
    ("confirmation runs that keep failing on infrastructure end", 2, 2, {0: [P, P], 2: [F, I, I], 1: [P, P]},
     [0, 2, 1], "first-bad", 2),
    ("no series", 0, 2, {0: [P, P]}, [0], "clean", None),
]


@pytest.mark.parametrize("name,n,repeats,recorded,order,status,first_bad", TABLE, ids=[t[0] for t in TABLE])
def test_policy_on_recorded_sequences(name, n, repeats, recorded, order, status, first_bad):
    got_order, outcome = replay(n, repeats, recorded)
    assert got_order == order
    assert outcome["status"] == status and outcome["first_bad"] == first_bad


def test_flaky_bad_patch_confidence_from_the_confirmation_runs():
    _, out = replay(4, 3, {0: [P, P, P], 4: [P, F], 2: [P, P, P], 3: [P, F, P, F, P]})  # all consumed: the
    # answer's 3 confirmation runs ran
    assert out["reproduction_rate"] == pytest.approx(1 / 3) and out["catching_runs"] == 1
    assert out["runs_at_bad_steps"] == 3                              # the rate runs only
    assert out["miss_chance"] == {"0": pytest.approx((2 / 3) ** 3), "2": pytest.approx((2 / 3) ** 3)}
    assert out["confidence"] == pytest.approx((1 - (2 / 3) ** 3) ** 2)
    assert out["confidence_lower_bound"] == pytest.approx(1 - 2 * (2 / 3) ** 3)


def test_the_rate_is_not_biased_by_the_runs_that_stop_at_a_finding():
    """A recorded bisection of a bug caught in about a third of the runs (R=3).  Counting the search's own runs,
    each bad step contributes exactly one finding however rare the bug: upto=4 caught at its first run,
    upto=3 at its second, so that ratio says 2/3 and the confidence looks high.  The confirmation runs after the
    first finding (1 catch in 3) give p = 1/3, and the confidence drops accordingly."""
    history = [(0, P), (0, P), (0, P), (4, F), (2, P), (2, P), (2, P), (3, P), (3, F), (3, P), (3, P), (3, F)]
    out = confidence(history, 3)
    assert out["stopping_rate"] == pytest.approx(2 / 3)              # findings / runs at bad steps: biased
    assert out["reproduction_rate"] == pytest.approx(1 / 3)          # the confirmation runs: P, P, F
    biased = 1 - (1 - 2 / 3) ** 3
    assert out["confidence"] == pytest.approx((1 - (2 / 3) ** 3) ** 2)
    assert out["confidence"] < biased ** 2                           # 0.49 instead of 0.93
    assert next_action(4, history[:-3], 3) == ("run", 3)             # named, so its confirmation runs come next


def test_without_confirmation_runs_the_rate_is_unknown_not_guessed():
    out = confidence([(0, P), (4, F), (2, P), (3, F)], 1)             # an interrupted search: no rate run yet
    assert out["reproduction_rate"] is None and out["confidence"] is None
    assert out["stopping_rate"] == 1.0 and "stopping bias" in out["why"]


def test_one_run_per_step_would_blame_the_wrong_patch_on_a_flaky_bug():
    # the same bug (patch 3, caught in half of the runs) with R=1: the miss at upto=3 condemns patch 4; the
    # confirmation run at upto=4 misses too, so p = 0 and the answer gets no confidence (the old ratio said 1)
    _, out = replay(4, 1, {0: [P], 4: [F, P], 2: [P], 3: [P]})
    assert out["first_bad"] == 4 and out["confidence"] == 0.0 and out["stopping_rate"] == 1.0


def test_clean_series_has_no_measurable_confidence():
    _, out = replay(3, 2, {0: [P, P], 3: [P, P]})
    assert out["reproduction_rate"] is None and out["confidence"] is None and "why" in out


def test_infra_range_names_the_candidates():
    _, out = replay(4, 1, {0: [P], 4: [F], 2: [I, I], 1: [P], 3: [F]})
    assert out["candidates"] == [2, 3] and out["last_good"] == 1


def test_a_step_in_progress_is_finished_before_moving_on():
    assert next_action(4, [(0, P), (0, P)], 3) == ("run", 0)
    assert next_action(4, [(0, P), (0, P), (0, P)], 3) == ("run", 4)
    assert next_action(4, [(0, P), (4, I)], 1) == ("run", 4)         # the one retry


def test_exit_codes():
    assert STATUS_EXIT == {"first-bad": 1, "clean": 0, "base-bad": 3, "infra": 3}


def test_bisect_json_and_summary_name_the_first_bad_patch():
    from harness.fleet.bisect import Bisect
    from harness.kernel.series import Patch
    from pathlib import Path
    b = Bisect(Path("/k.yaml"), Path("/s.yaml"), ["stop_on_first_finding=true"], 1, Path("/r"))
    b.patches = [Patch(Path(f"/p{i}"), f"000{i}.patch", f"subject {i}", f"{i}" * 64) for i in (1, 2)]
    recorded = {0: [P], 2: [F, F], 1: [P]}
    runs, outcome = drive(2, 1, lambda u: {"verdict": recorded[u].pop(0), "run_dir": f"runs/upto-{u}/x",
                                           "first_finding_s": 17.0 if u == 2 else None})
    doc = bisect_json(b, runs, outcome, 0.0)
    assert doc["first_bad"] == {"index": 2, "file": "0002.patch", "subject": "subject 2", "sha256": "2" * 64}
    assert [s["upto"] for s in doc["steps"]] == [0, 2, 1] and doc["steps"][1]["verdict"] == "bad"
    assert doc["steps"][1]["runs"][0] == {"verdict": F, "run_dir": "runs/upto-2/x", "first_finding_s": 17.0}
    assert doc["steps"][0]["patch"] is None and doc["steps"][2]["patch"]["subject"] == "subject 1"
    text = summary(doc)
    assert "FIRST BAD PATCH 2/2: subject 2" in text and "finding@17.0s" in text
    assert confidence([(u, v) for u, v in [(0, P), (2, F), (1, P), (2, F)]], 1)["confidence"] == 1.0
    assert "1 catching of 1 confirmation runs" in text
