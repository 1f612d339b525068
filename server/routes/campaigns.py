"""Campaigns (admin): a cohort's automatic rounds. POST creates one; pause, resume and stop act on it; the
job workers advance it (:mod:`server.driver`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from arte.wire import API_PREFIX
from server import campaigns
from server.campaigns import CampaignIn, CampaignOut
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import Conflict, NotFound
from server.openapi import raises
from server.routes.common import IdPath, IdQuery

router = APIRouter(prefix=API_PREFIX, tags=["campaigns"])

State = Literal[campaigns.STATES]  # type: ignore[valid-type]
_CONFLICT = raises((Conflict, "The campaign's state does not allow it."))


@router.post("/campaigns", status_code=201, response_model=CampaignOut,
             responses=raises((Conflict, "The cohort already has an active or paused campaign.")))
def create(body: CampaignIn, _: AdminDep, s: SessionDep, now: NowDep) -> CampaignOut:
    """Start a campaign: the workers run its rounds from now on, with nobody at the keyboard."""
    return campaigns.campaign_out(s, campaigns.create_campaign(s, body, now))


@router.get("/campaigns", response_model=list[CampaignOut], responses=raises((NotFound, "No cohort with that id.")))
def list_campaigns(_: AdminDep, s: SessionDep, cohort_id: IdQuery = None, state: State | None = None
                   ) -> list[CampaignOut]:
    campaigns.check_cohort(s, cohort_id)
    return [campaigns.campaign_out(s, c) for c in campaigns.list_campaigns(s, cohort_id=cohort_id, state=state)]


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
def show(campaign_id: IdPath, _: AdminDep, s: SessionDep,
         events: Annotated[int, Query(ge=0, le=1000, description="Newest transitions to include.")] = 50
         ) -> CampaignOut:
    """The campaign, its rounds (lineage and figures) and its newest transitions."""
    return campaigns.campaign_out(s, campaigns.get_campaign(s, campaign_id), events=events)


@router.post("/campaigns/{campaign_id}/pause", response_model=CampaignOut, responses=_CONFLICT)
def pause(campaign_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> CampaignOut:
    """Pause: the job in flight finishes, nothing new starts until resumed."""
    return campaigns.campaign_out(s, campaigns.pause(s, campaign_id, now))


@router.post("/campaigns/{campaign_id}/resume", response_model=CampaignOut, responses=_CONFLICT)
def resume(campaign_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> CampaignOut:
    """Resume a paused campaign (also one paused after repeated failures) where it stopped."""
    return campaigns.campaign_out(s, campaigns.resume(s, campaign_id, now))


@router.post("/campaigns/{campaign_id}/stop", response_model=CampaignOut, responses=_CONFLICT)
def stop(campaign_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> CampaignOut:
    """Stop for good: the job in flight is cancelled, the collecting round closed."""
    return campaigns.campaign_out(s, campaigns.stop(s, campaign_id, now))
