"""Keep serving, the registry and the experiment record in step.

The registry's aliases say what should serve; the experiment record says which
test is running, under which rule; the Serve config says what does serve. Every
change goes the same way: move the alias (or the split), open or close the
experiment, then apply the live knobs to the running app (``with_user_config``),
so serving follows the registry without a restart and without dropping requests.

The registry is read before the experiment record or serving is touched and not after
``promote``/``rollback`` have moved the aliases (they say what they made): a tracking server
that goes down mid-command leaves the record and serving as they were, and the registry in a
state the same command, run again, finishes. A half-moved registry is never deployed
(``versions`` refuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.data.predlog import PredictionLog
from components.model.registry import Registry
from serving.abtest import DecisionRule
from serving.deploy import ServeAdmin, ServingError, with_user_config
from serving.eventlog import FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION, Experiment, Experiments
from serving.report import Covariate, ab_report
from serving.router import Traffic
from serving.tagging import alias_ref

# the full Serve config for arm versions (a number, an "@alias" a replica resolves as it starts, None: nothing)
# and the router's knobs
ConfigFor = Callable[[dict[str, int | str | None], Traffic], dict]


@dataclass
class Serving:
    """What the control functions act on, resolved from settings by the face."""

    admin: ServeAdmin
    registry: Registry
    experiments: Experiments
    config_for: ConfigFor
    split: float  # the challenger's share when a test starts
    rule: DecisionRule  # declared into each experiment as it starts
    predictions: PredictionLog
    feedback: FeedbackLog
    pre_days: float = 14.0
    covariate: Covariate | None = None  # CUPED's pre-test number per user; None: the serving logs'


@dataclass(frozen=True)
class Outcome:
    """What ``decide`` found and, when applied, did."""

    report: dict
    verdict: str
    action: str  # promoted, rolled back, none
    experiment: Experiment | None  # the one running afterwards


def versions(registry: Registry) -> dict[str, int | None]:
    """What the aliases say should serve; refused for a registry a promotion or rollback left half-way."""
    state = registry.state()
    if state.champion is None:
        raise ServingError("there is no champion to serve: train and promote one first (`trendloop train`)")
    unfinished = state.unfinished()
    if unfinished is not None:
        raise ServingError(f"serving keeps what it has: {unfinished}")
    return {CHAMPION: state.champion, CHALLENGER: state.challenger}


def traffic_of(experiment: Experiment | None, champion: int) -> Traffic:
    if experiment is None:
        return Traffic(champion_version=champion)
    return Traffic(
        split=experiment.split,
        salt=experiment.salt,
        experiment=experiment.id,
        champion_version=experiment.champion_version,
        challenger_version=experiment.challenger_version,
    )


def current_config(s: Serving) -> dict:
    """The Serve config for the registry's aliases and the running test: what ``up`` applies."""
    wanted = versions(s.registry)
    return s.config_for(wanted, traffic_of(s.experiments.current(), wanted[CHAMPION]))


def fresh_config(config_for: ConfigFor) -> dict:
    """The Serve config for a cluster that has not served yet: a KubeRay RayService's ``serveConfigV2``.

    It needs no registry or experiment state: the champion arm loads whatever @champion names when its
    replica starts (nothing, until a first model is promoted), the challenger serves nothing and no test
    runs. ``up`` and ``follow`` then pin versions live, as everywhere; a head that restarts comes back on
    this document and so on the champion of that moment.
    """
    return config_for({CHAMPION: alias_ref(CHAMPION), CHALLENGER: None}, Traffic())


def align_experiment(
    s: Serving, split: float | None = None, note: str = "", wanted: dict[str, int | None] | None = None
) -> Experiment | None:
    """The experiment matching the registry's aliases (``wanted``, when the caller knows them): the running one
    if it matches, else a new one.

    A running experiment whose versions (or split, when one is given) no longer match
    is closed as ``stopped``; no challenger means no experiment.
    """
    wanted = wanted or versions(s.registry)
    current = s.experiments.current()
    if split is None:
        split = current.split if current is not None else s.split
    same = (
        current is not None
        and current.champion_version == wanted[CHAMPION]
        and current.challenger_version == wanted[CHALLENGER]
        and current.split == split
    )
    if same:
        return current
    if current is not None:
        s.experiments.finish(current.id, "stopped", note or "the registry's aliases or the split changed")
    if wanted[CHALLENGER] is None:
        return None
    salt = current.salt if current is not None and current.challenger_version == wanted[CHALLENGER] else None
    return s.experiments.start(wanted[CHAMPION], wanted[CHALLENGER], split, s.rule.to_dict(), salt=salt)


def up(s: Serving, timeout: float = 600.0) -> Experiment | None:
    """Deploy the app for the registry's current aliases and wait until it serves."""
    experiment = align_experiment(s)
    wanted = versions(s.registry)
    s.admin.deploy(s.config_for(wanted, traffic_of(experiment, wanted[CHAMPION])))
    s.admin.wait_running(timeout)
    return experiment


def follow(
    s: Serving, split: float | None = None, note: str = "", wanted: dict[str, int | None] | None = None
) -> Experiment | None:
    """Bring the running app in line with the registry (``wanted``: its aliases, read here when not given) and
    ``split``, live; a no-op when nothing runs."""
    wanted = wanted or versions(s.registry)
    experiment = align_experiment(s, split, note, wanted)
    deployed = s.admin.config() if s.admin.reachable() else None
    if deployed is not None:
        served = {CHAMPION: wanted[CHAMPION], CHALLENGER: experiment.challenger_version if experiment else None}
        s.admin.deploy(with_user_config(deployed, traffic_of(experiment, wanted[CHAMPION]), served))
        s.admin.wait_running()
    return experiment


def report(s: Serving, experiment: Experiment | None = None) -> dict:
    experiment = experiment or s.experiments.current()
    if experiment is None:
        raise ServingError("no A/B test is running (a test starts when the registry has a @challenger)")
    return ab_report(s.predictions, s.feedback, experiment, s.pre_days, covariate=s.covariate)


def decide(s: Serving, apply: bool) -> Outcome:
    """Apply the running experiment's declared rule; with ``apply``, promote or roll back as it says."""
    experiment = s.experiments.current()
    found = report(s, experiment)
    verdict = found["decision"]["verdict"]
    if not apply or verdict not in ("promote", "rollback"):
        return Outcome(found, verdict, "none", experiment)
    assert experiment is not None and experiment.challenger_version is not None
    challenger = experiment.challenger_version
    before = s.registry.state()
    if before.challenger != challenger:
        raise ServingError(
            f"the test ran version {challenger}, but @challenger is now version {before.challenger}: "
            "the verdict is not about it; `trendloop serve up` starts a test of the current challenger"
        )
    if verdict == "promote":
        s.registry.promote(challenger)  # refuses a version whose gate did not pass
        wanted = {CHAMPION: challenger, CHALLENGER: None}
        s.experiments.finish(experiment.id, "promote", found["decision"]["headline"])
        action = f"promoted version {challenger} to @champion"
    else:
        s.registry.clear_challenger(f"lost A/B test {experiment.id}: {found['decision']['headline']}")
        wanted = {CHAMPION: before.champion, CHALLENGER: None}
        s.experiments.finish(experiment.id, "rollback", found["decision"]["headline"])
        action = f"rolled back: version {challenger} no longer serves"
    return Outcome(found, verdict, action, follow(s, wanted=wanted))


def promote(s: Serving, force: bool = False) -> tuple[int, Experiment | None]:
    """Make @challenger the champion now, whatever the test says; serving follows. Returns (version, test)."""
    challenger = s.registry.version_of(CHALLENGER)
    s.registry.promote(challenger, force=force)  # the last request to the registry: it leaves no @challenger
    current = s.experiments.current()
    if current is not None:
        tested = current.challenger_version == challenger
        s.experiments.finish(current.id, "promote" if tested else "stopped", f"version {challenger} promoted by hand")
    return challenger, follow(s, wanted={CHAMPION: challenger, CHALLENGER: None})


def rollback(s: Serving) -> tuple[int, int, Experiment | None]:
    """Give @champion back to the previous champion; serving follows. Returns (from, to, test)."""
    challenger = s.registry.alias(CHALLENGER)  # a rollback moves @champion, and drops @challenger if it names it
    current, previous = s.registry.rollback()
    wanted = {CHAMPION: previous, CHALLENGER: None if challenger == previous else challenger}
    return current, previous, follow(s, note="champion rolled back", wanted=wanted)
