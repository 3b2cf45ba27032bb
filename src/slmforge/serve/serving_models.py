"""`/v1/models`: the served model and each of its adapters, a model of its own."""

from __future__ import annotations

from slmforge.serve.app import ServerState
from slmforge.serve.models import ServedModel
from slmforge.serve.protocol import ModelCard, ModelList


def model_card(served: ServedModel, model_id: str) -> ModelCard:
    # an adapter names its base as `parent`; every card names it as `root`, as vLLM does
    parent = {"parent": served.name} if model_id != served.name else {}
    return ModelCard(id=model_id, created=served.created, root=served.name, **parent)


def list_models(state: ServerState) -> ModelList:
    served = state.ready()
    return ModelList(data=[model_card(served, m) for m in served.model_ids()])


def get_model(state: ServerState, model: str) -> ModelCard:
    state.adapter_for(model)  # 404 when unknown
    return model_card(state.ready(), model)
