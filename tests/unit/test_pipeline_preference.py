"""The workflow's finetune stage with preference objectives: `objective`, `beta`, `orpo_lambda`
and `simpo_gamma` come from FinetuneConfig like every option, change the stage's cache key
(so a new beta trains again), and a wrong combination names the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmforge.errors import ConfigError
from slmforge.pipeline.graph import plan_workflow
from slmforge.pipeline.record import RunRecord, StageRecord
from slmforge.pipeline.workflow import apply_overrides, parse_workflow

WF = Path("wf.yaml")


def _data() -> dict:
    return {
        "stages": {
            "finetune": {
                "model": "base-model",
                "data": "pairs.jsonl",
                "out": "out/adapter",
                "objective": "dpo",
                "beta": 0.1,
            },
            "merge": {"adapter": "${finetune.output}", "out": "out/merged"},
        }
    }


def _keys(overrides: list[str]) -> dict[str, str]:
    flow = parse_workflow(apply_overrides(_data(), overrides), WF)
    return {plan.name: plan.key for plan in plan_workflow(flow, [])}


def test_preference_options_reach_the_stage_config() -> None:
    flow = parse_workflow(_data(), WF)
    cfg = flow.stages["finetune"].config
    assert (cfg.objective, cfg.beta, cfg.effective_beta) == ("dpo", 0.1, 0.1)
    simpo = parse_workflow(
        apply_overrides(
            _data(), ["stages.finetune.objective=simpo", "stages.finetune.simpo_gamma=1.0"]
        ),
        WF,
    )
    assert simpo.stages["finetune"].config.simpo_gamma == 1.0


@pytest.mark.parametrize(
    "override",
    [
        "stages.finetune.beta=0.2",
        "stages.finetune.objective=orpo",
        "stages.finetune.orpo_lambda=0.3",
        "stages.finetune.simpo_gamma=1.0",
    ],
)
def test_a_changed_preference_option_reruns_the_stage_and_what_follows(override: str) -> None:
    if "objective=orpo" in override:  # orpo has no beta
        data = _data()
        del data["stages"]["finetune"]["beta"]
        before = {p.name: p.key for p in plan_workflow(parse_workflow(data, WF), [])}
        flow = parse_workflow(apply_overrides(data, [override]), WF)
        after = {p.name: p.key for p in plan_workflow(flow, [])}
    else:
        before, after = _keys([]), _keys([override])
    assert after["finetune"] != before["finetune"]
    assert after["merge"] != before["merge"]


def test_a_finished_dpo_stage_is_cached_until_beta_changes() -> None:
    plans = plan_workflow(parse_workflow(_data(), WF), [])
    record = RunRecord(
        id="run-1",
        workflow="wf.yaml",
        stages={
            p.name: StageRecord(kind=p.kind, key=p.key, status="done", output=str(p.output))
            for p in plans
        },
    )
    same = plan_workflow(parse_workflow(_data(), WF), [record])
    assert [p.action for p in same] == ["cached", "cached"]
    changed = parse_workflow(apply_overrides(_data(), ["stages.finetune.beta=0.5"]), WF)
    assert [p.action for p in plan_workflow(changed, [record])] == ["run", "run"]


def test_beta_for_sft_names_the_yaml_path() -> None:
    data = _data()
    data["stages"]["finetune"]["objective"] = "sft"
    with pytest.raises(
        ConfigError, match=r"^wf.yaml: stages.finetune: --beta does not apply to --objective sft$"
    ):
        parse_workflow(data, WF)
