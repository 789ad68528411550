"""bench/truth.py's table logic on synthetic recordings: which default rule fired at which update."""

from __future__ import annotations

from alerts_stream import Stream

from bench.truth import (
    DEFAULT_UPDATES,
    EXPECTED,
    FAULT_AT,
    TINY_BATCH,
    TINY_BATCH_FLAGS,
    WATCH_UNTIL,
    Outcome,
    Scenario,
    dashboard_warnings,
    first_firings,
    judge,
    scenarios,
    spans,
    table,
)
from consumers.alerts.rules import default_rules

RULES = default_rules()
NAMES = [rule.name for rule in RULES]


def _recording(s: Stream, n: int, at: dict[int, dict[str, object]] | None = None) -> list:
    """training_started, then per update a ppo_update, a batch and a heartbeat, received at their ts."""
    items = [s.started(), s.heartbeat(progress_age_s=0.01)]
    for _ in range(n):
        items += [s.ppo(**(at or {}).get(s.update, {})), s.batch(), s.heartbeat(progress_age_s=0.01)]
    items.append(s.finished())
    return [(env.ts, env) for env in items]


def test_a_healthy_recording_is_quiet_on_every_default_rule() -> None:
    fired = first_firings(_recording(Stream(seed=3), 120), RULES)
    assert fired == dict.fromkeys(NAMES)


def test_a_fault_fires_its_rule_at_the_update_the_consumer_had_folded() -> None:
    spike = {u: {"kl_divergence": 0.2} for u in range(30, 40)}
    fired = first_firings(_recording(Stream(), 60, spike), RULES)
    assert fired["kl_divergence_high"] == 32  # for_updates = 3: 30, 31, 32
    assert {name for name, at in fired.items() if at is not None} == {"kl_divergence_high"}


def test_the_clock_between_items_is_ticked_so_time_rules_fire_in_a_silence() -> None:
    s = Stream(dt=0.1)
    timeline = _recording(s, 20)[:-1]  # no training_finished: the producer went quiet
    last = timeline[-1][0]
    s.ts = last + 30.0
    timeline.append((s.ts, s.heartbeat(progress_age_s=0.01)))  # 30 s later it speaks again
    fired = first_firings(timeline, RULES, tick_s=0.5)
    assert fired["producer_silent"] == 19  # fired during the silence, after update 19
    assert fired["trainer_stuck"] is None


def test_a_hang_inside_an_update_fires_trainer_stuck_not_producer_silent() -> None:
    s = Stream(dt=0.1)
    timeline = _recording(s, 30)[:-1]
    t0 = timeline[-1][0]
    for k in range(1, 41):  # heartbeats every second while the loop sleeps
        s.ts = t0 + k
        timeline.append((s.ts, s.heartbeat(progress_age_s=float(k))))
    fired = first_firings(timeline, RULES)
    assert fired["trainer_stuck"] == 29
    assert fired["producer_silent"] is None


def _learning_then_settled(s: Stream, settle_at: int, n: int, cv_rises_at: int = 0) -> list:
    """The return climbs 0.1 per update until ``settle_at``, then holds; gradient_cv reads 1.5, and
    3.0 from ``cv_rises_at`` on (a healthy run's noise takes over once its return levels off)."""
    items = [s.started()]
    for u in range(n):
        ret = 0.1 * min(u, settle_at) + 0.02 * (-1) ** u
        cv = 3.0 if u >= cv_rises_at else 1.5
        items += [s.ppo(gradient_cv=cv), s.batch(return_mean=ret), s.heartbeat(progress_age_s=0.01)]
    return [(env.ts, env) for env in items]


def test_gradient_cv_fires_while_the_return_climbs_and_not_once_it_has_settled() -> None:
    # Measured at 0, 10, 20, ...: two readings above 2.0 in a row fire (for_updates = 20).
    climbing = first_firings(_learning_then_settled(Stream(), settle_at=200, n=60), RULES)
    assert climbing["gradient_cv"] == 10  # the readings at 0 and 10 stand for updates 0-19
    late = first_firings(_learning_then_settled(Stream(), settle_at=200, n=80, cv_rises_at=40), RULES)
    assert late["gradient_cv"] == 50
    # The same readings once the return has held since update 20 (settled from update 43 on: its newest
    # 15 returns are then within 10% of the gain of the 15 before): quiet.
    settled = _learning_then_settled(Stream(), settle_at=20, n=100, cv_rises_at=50)
    assert first_firings(settled, RULES)["gradient_cv"] is None
    assert dashboard_warnings(settled) == []


def test_dashboard_warnings_names_the_banner_and_the_cv_word_by_update() -> None:
    s = Stream()
    spike = {30: {"kl_divergence": 0.05}, 31: {"kl_divergence": 0.2}}  # KL warns from 0.03, fails from 0.1
    warnings = dashboard_warnings(_recording(s, 40, spike))
    assert warnings == [(30, "WARN:KL"), (31, "FAIL:KL")]
    climbing = dashboard_warnings(_learning_then_settled(Stream(), settle_at=200, n=21))
    assert climbing == [(u, "CV noisy") for u in range(21)]  # a climbing run is judged from its first reading
    assert spans([(30, "WARN:KL"), (31, "WARN:KL"), (40, "CV noisy"), (35, "WARN:KL")]) == (
        "WARN:KL at 30-31, 35; CV noisy at 40"
    )
    assert spans([]) == "none"


def test_the_bench_s_default_run_length_is_the_trainer_s() -> None:
    from producer.config import TrainConfig

    assert TrainConfig().updates == DEFAULT_UPDATES


def _outcome(name: str, expect: str, **fired: int) -> Outcome:
    return Outcome(Scenario(name, 1, (f"{name}@25",) if expect else (), expect), dict.fromkeys(NAMES) | fired)


def test_the_table_has_a_row_per_rule_and_marks_the_expected_cell() -> None:
    outcomes = [
        _outcome("healthy seed 1", ""),
        _outcome("lr_spike", "kl_divergence_high", kl_divergence_high=27),
        _outcome("dead_layers", "dead_layers", exploding_layers=26),
        Outcome(Scenario("hang", 1, ("hang@25",), "trainer_stuck"), dict.fromkeys(NAMES), "exit 2: bad flag"),
    ]
    text = table(outcomes, NAMES)
    lines = text.splitlines()
    assert lines[0] == "| rule | healthy seed 1 | lr_spike | dead_layers | hang |"
    assert "| `kl_divergence_high` | quiet | **fired at update 27** | quiet | error |" in lines
    assert "| `dead_layers` | quiet | quiet | **quiet** | error |" in lines
    assert "| `exploding_layers` | quiet | quiet | fired at update 26 | error |" in lines
    assert sum(line.startswith("| `") for line in lines) == len(NAMES)
    assert "hang: exit 2: bad flag" in text
    v = judge(outcomes)
    assert (v.caught, v.missed, v.errors, v.false_alarms) == (["lr_spike"], ["dead_layers"], ["hang"], [])


def test_a_rule_firing_on_a_healthy_seed_is_a_false_alarm() -> None:
    v = judge([_outcome("healthy seed 2", "", gradient_cv=21)])
    assert v.false_alarms == ["healthy seed 2: gradient_cv"]


def test_scenarios_use_the_producer_s_fault_flag_and_keep_fragment_to_cuda() -> None:
    cpu = scenarios((1, 2, 3), cuda=False)
    assert [s.name for s in cpu[:3]] == ["healthy seed 1", "healthy seed 2", "healthy seed 3"]
    assert {s.name for s in cpu[3:]} == set(EXPECTED) - {"fragment"} | {TINY_BATCH}
    tiny = cpu[-1]
    assert tiny.expect == "gradient_cv" and tiny.faults == () and tiny.stop_at is None
    assert tiny.argv("tcp://127.0.0.1:5999")[-8:] == ["--seed", "1", *TINY_BATCH_FLAGS]
    assert "fragment" in {s.name for s in scenarios((1,), cuda=True)}
    healthy, hang = cpu[0], next(s for s in cpu if s.name == "hang")
    # A healthy seed is a whole default run; a fault goes into a default run and is watched to update 90.
    assert "--updates" not in healthy.argv("tcp://127.0.0.1:5999") and healthy.stop_at is None
    assert hang.argv("tcp://127.0.0.1:5999")[-4:] == ["--seed", "1", "--fault", "hang@25"]
    assert (hang.stop_at, FAULT_AT, WATCH_UNTIL) == (90, 25, 90)
    quick = next(s for s in scenarios((1,), quick=True) if s.name == "hang")
    assert quick.argv("tcp://127.0.0.1:5999")[-6:] == ["--updates", "40", "--seed", "1", "--fault", "hang@15"]
    assert all(rule in NAMES for rule in EXPECTED.values())
