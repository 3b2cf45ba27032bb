"""Workflow files, overrides, references, the stage graph, cache keys and the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmforge.errors import ConfigError
from slmforge.pipeline.graph import cache_key, input_hashes, plan_workflow, topological_order
from slmforge.pipeline.record import RunRecord, StageRecord
from slmforge.pipeline.workflow import (
    apply_overrides,
    load_workflow,
    parse_override,
    parse_workflow,
)

WF = Path("wf.yaml")


def _data() -> dict:
    return {
        "stages": {
            "sample": {"out": "out/travel.jsonl"},
            "convert": {"input": "${sample.output}", "out": "out/chat.jsonl"},
            "split": {"input": "${convert.output}", "out_dir": "out/split"},
            "finetune": {
                "model": "base-model",
                "data": "${split.output}/train.jsonl",
                "out": "out/adapter",
            },
        }
    }


def test_references_resolve_to_output_paths_and_order_follows_them() -> None:
    data = _data()
    # file order is not run order: the stage that needs another comes after it
    data["stages"] = dict(reversed(list(data["stages"].items())))
    flow = parse_workflow(data, WF)
    assert list(flow.stages) == ["sample", "convert", "split", "finetune"]
    assert flow.stages["finetune"].config.data == Path("out/split/train.jsonl")
    assert flow.stages["finetune"].needs == ["split"]
    assert flow.stages["split"].output == Path("out/split")
    assert flow.runs_dir == Path("runs")


def test_unknown_key_names_file_path_and_guess() -> None:
    data = _data()
    data["stages"]["finetune"]["lora_rank"] = 8
    with pytest.raises(ConfigError) as err:
        parse_workflow(data, WF)
    assert (
        str(err.value) == "wf.yaml: stages.finetune.lora_rank: unknown field, did you mean lora_r?"
    )


def test_bad_value_names_the_yaml_path() -> None:
    data = _data()
    data["stages"]["finetune"]["max_steps"] = 0
    with pytest.raises(ConfigError, match=r"^wf.yaml: stages.finetune.max_steps: .*greater than 0"):
        parse_workflow(data, WF)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update(finetun={"out": "x"}),
            "wf.yaml: stages.finetun: unknown stage kind 'finetun', did you mean finetune?",
        ),
        (
            lambda s: s["split"].update(uses="spilt"),
            "wf.yaml: stages.split.uses: unknown stage kind 'spilt', did you mean split?",
        ),
        (
            lambda s: s["split"].update(input="${convrt.output}"),
            "wf.yaml: stages.split.input: reference to unknown stage 'convrt', "
            "did you mean convert?",
        ),
        (
            lambda s: s["split"].update(input="${convert.path}"),
            "wf.yaml: stages.split.input: ${convert.path}: stages only have .output",
        ),
        (
            lambda s: s["split"].update(input="${HOME}"),
            "wf.yaml: stages.split.input: ${HOME} is not a stage reference",
        ),
        (
            lambda s: s["sample"].update(out="${split.output}/x.jsonl"),
            "wf.yaml: stages: cycle between stages: sample -> split -> convert -> sample",
        ),
        (
            lambda s: s.update(
                check={"uses": "validate", "files": ["a"]},
                x={"uses": "sample", "out": "${check.output}"},
            ),
            "wf.yaml: stages.x.out: stage 'check' (validate) has no output",
        ),
    ],
)
def test_bad_workflows_fail_with_the_yaml_path(change, message: str) -> None:
    data = _data()
    change(data["stages"])
    with pytest.raises(ConfigError) as err:
        parse_workflow(data, WF)
    assert str(err.value).startswith(message)


def test_after_orders_stages_without_a_path() -> None:
    data = _data()
    data["stages"] = {
        "check": {"uses": "sample", "out": "x.jsonl", "after": ["split"]},
        **data["stages"],
    }
    flow = parse_workflow(data, WF)
    assert list(flow.stages) == ["sample", "convert", "split", "check", "finetune"]
    assert flow.stages["check"].needs == ["split"]
    assert flow.dependents({"convert"}) == {"convert", "split", "check", "finetune"}
    data["stages"]["check"]["after"] = ["splt"]
    with pytest.raises(ConfigError, match=r"stages.check.after: unknown stage 'splt', did you"):
        parse_workflow(data, WF)


def test_top_level_and_stage_shape_errors() -> None:
    with pytest.raises(ConfigError, match=r"wf.yaml: stage: unknown key, did you mean stages"):
        parse_workflow({"stage": {}}, WF)
    with pytest.raises(ConfigError, match=r"wf.yaml: stages: expected a mapping"):
        parse_workflow({"stages": []}, WF)
    with pytest.raises(ConfigError, match=r"wf.yaml: stages.sample: expected a mapping"):
        parse_workflow({"stages": {"sample": "out.jsonl"}}, WF)


def test_overrides_parse_yaml_values_and_check_stage_names() -> None:
    assert parse_override("stages.finetune.max_steps=50") == (
        ["stages", "finetune", "max_steps"],
        50,
    )
    assert parse_override("stages.finetune.packing=true")[1] is True
    assert parse_override("stages.eval.target=[a=x, b=y]")[1] == ["a=x", "b=y"]
    data = apply_overrides(_data(), ["stages.finetune.max_steps=50", "runs_dir=elsewhere"])
    flow = parse_workflow(data, WF)
    assert flow.stages["finetune"].config.max_steps == 50
    assert flow.runs_dir == Path("elsewhere")
    with pytest.raises(ConfigError, match=r"no stage 'finetun', did you mean finetune"):
        apply_overrides(_data(), ["stages.finetun.max_steps=5"])
    with pytest.raises(ConfigError, match=r"expected KEY.PATH=VALUE"):
        apply_overrides(_data(), ["stages.finetune.max_steps"])
    with pytest.raises(ConfigError, match=r"unknown top-level key 'stage'"):
        apply_overrides(_data(), ["stage.finetune.max_steps=5"])
    # an override into an unknown option is caught by the stage's model, with its path
    with pytest.raises(ConfigError, match=r"stages.finetune.max_step: unknown field"):
        parse_workflow(apply_overrides(_data(), ["stages.finetune.max_step=5"]), WF)


def test_load_workflow_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("stages:\n  sample:\n  more: {uses: sample, out: a.jsonl}\n", "utf-8")
    flow = load_workflow(path, ["stages.more.out=b.jsonl"])
    assert flow.stages["more"].output == Path("b.jsonl")
    assert flow.stages["sample"].output == Path("travel.jsonl")  # an empty stage: defaults


@pytest.mark.parametrize("name", ["workflow.yaml", "workshop.yaml"])
def test_example_workflows_are_valid(name: str) -> None:
    flow = load_workflow(Path(__file__).parents[2] / "examples" / name)
    assert list(flow.stages)[-1] == "eval" and "finetune" in flow.stages


def test_topological_order_keeps_file_order_when_free() -> None:
    assert topological_order({"a": [], "b": [], "c": ["a"]}, "x") == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"cycle between stages: a -> a"):
        topological_order({"a": ["a"]}, "x")


def test_cache_key_follows_config_inputs_and_upstream_not_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data.jsonl").write_text('{"prompt": "a", "response": "b"}\n', encoding="utf-8")
    data = {"stages": {"split": {"input": "data.jsonl", "out_dir": "out/split"}}}

    def key(overrides: list[str], upstream: dict[str, str] | None = None) -> str:
        stage = parse_workflow(apply_overrides(_copy(data), overrides), WF).stages["split"]
        return cache_key(stage, upstream or {}, input_hashes(stage, []))

    first = key([])
    assert key([]) == first
    assert key(["stages.split.force=true"]) == first
    assert key(["stages.split.seed=1"]) != first
    Path("data.jsonl").write_text('{"prompt": "a", "response": "c"}\n', encoding="utf-8")
    assert key([]) != first


def test_input_hashes_skip_strings_that_are_not_paths_and_fingerprint_plain_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmforge.pipeline.graph import content_hash

    monkeypatch.chdir(tmp_path)
    Path("model").mkdir()
    Path("model/config.json").write_text("{}", encoding="utf-8")
    data = {
        "stages": {
            "convert": {"input": "model/config.json", "out": "o.jsonl", "system_prompt": "x" * 5000}
        }
    }
    stage = parse_workflow(data, WF).stages["convert"]
    assert list(input_hashes(stage, [])) == ["model/config.json"]
    before = content_hash(Path("model"))
    Path("model/config.json").write_text('{"a": 1}', encoding="utf-8")
    assert content_hash(Path("model")) != before


def _copy(data: dict) -> dict:
    return {"stages": {k: dict(v) for k, v in data["stages"].items()}}


def test_upstream_key_changes_every_key_below_it() -> None:
    base = plan_workflow(parse_workflow(_data(), WF), [])
    changed = apply_overrides(_data(), ["stages.convert.system_prompt=Be brief."])
    after = plan_workflow(parse_workflow(changed, WF), [])
    same = [a.name for a, b in zip(base, after, strict=True) if a.key == b.key]
    assert same == ["sample"]


def _record(run_id: str, plans, digests: dict[str, str | None], failed: str = "") -> RunRecord:
    stages = {
        p.name: StageRecord(
            kind=p.kind,
            key=p.key,
            status="failed" if p.name == failed else "done",
            output=str(p.output),
            digest=digests.get(p.name),
        )
        for p in plans
    }
    return RunRecord(id=run_id, workflow="wf.yaml", stages=stages)


def _write_outputs(flow) -> dict[str, str | None]:
    from slmforge.pipeline.graph import content_hash

    digests = {}
    for name, stage in flow.stages.items():
        out = stage.output
        if name in ("split",):
            out.mkdir(parents=True, exist_ok=True)
            (out / "train.jsonl").write_text("x\n", encoding="utf-8")
        elif name == "finetune":
            out.mkdir(parents=True, exist_ok=True)
            (out / "adapter.safetensors").write_text("w", encoding="utf-8")
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(name, encoding="utf-8")
        digests[name] = content_hash(out)
    return digests


def test_plan_caches_forces_dependents_and_notices_changed_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    flow = parse_workflow(_data(), WF)
    first = plan_workflow(flow, [])
    assert [p.action for p in first] == ["run"] * 4
    assert first[0].reason == "no earlier run"
    assert first[1].reason == "it needs sample, which runs"
    records = [_record("r1", first, _write_outputs(flow))]

    again = plan_workflow(flow, records)
    assert [(p.action, p.cached_from) for p in again] == [("cached", "r1")] * 4

    forced = plan_workflow(flow, records, {"convert"})
    assert [p.action for p in forced] == ["cached", "run", "run", "run"]
    assert forced[1].reason == "--force"
    assert forced[2].reason == "it depends on forced stage convert"
    with pytest.raises(ConfigError, match=r"--force convrt: no such stage"):
        plan_workflow(flow, records, {"convrt"})

    changed = parse_workflow(apply_overrides(_data(), ["stages.split.seed=3"]), WF)
    plan = plan_workflow(changed, records)
    assert [p.action for p in plan] == ["cached", "cached", "run", "run"]
    assert plan[2].reason == "its config or inputs changed since run r1"

    Path("out/chat.jsonl").write_text("edited by hand", encoding="utf-8")
    plan = plan_workflow(flow, records)
    assert [p.action for p in plan] == ["cached", "run", "run", "run"]
    assert plan[1].reason == "its output out/chat.jsonl changed since run r1"


def test_plan_reruns_a_failed_stage_and_what_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    flow = parse_workflow(_data(), WF)
    first = plan_workflow(flow, [])
    digests = _write_outputs(flow)
    record = _record("r1", first[:3], digests, failed="split")
    plan = plan_workflow(flow, [record])
    assert [p.action for p in plan] == ["cached", "cached", "run", "run"]
    assert plan[2].reason == "it failed in run r1"
