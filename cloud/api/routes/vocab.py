"""The vocabulary (``floodgate.vocab``): what the dashboard reads instead of copying it."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cloud.api.deps import Reader
from cloud.api.errors import responses
from floodgate import vocab

router = APIRouter(prefix="/api/v1", tags=["vocabulary"], responses=responses(401))


class AlertKind(BaseModel):
    ticket_kind: str
    water: bool
    observed: bool
    public: bool
    depth: bool


class DeviceKind(BaseModel):
    points: list[str]
    sensor: bool


class TicketKind(BaseModel):
    department: str
    title: str
    by_level: bool


class Action(BaseModel):
    from_: list[str] = Field(alias="from")
    to: str | None
    roles: list[str]
    note: bool
    event: str


class Rung(BaseModel):
    level: int
    to: str


class Vocabulary(BaseModel):
    levels: list[str]
    priorities: list[str]
    alert_kinds: dict[str, AlertKind]
    device_kinds: dict[str, DeviceKind]
    ticket_kinds: dict[str, TicketKind]
    states: list[str]
    active_states: list[str]
    actions: dict[str, Action]
    notify_as: dict[str, str]
    ladder: list[Rung]


@router.get("/vocab", response_model=Vocabulary, response_model_by_alias=True)
async def get_vocab(who: Reader) -> Any:
    """Levels, alert, device and ticket kinds, ticket states and actions (from, to, roles, note),
    what is notified, and the escalation ladder."""
    return vocab.as_json()
