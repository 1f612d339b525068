"""Enrollment: a one-time token becomes this device's identity in its state dir.

Contract: :func:`enroll` picks the firmware profile (given, or matched to the detected hardware), validates
the local settings given with it (private data path, dataset key), sends one ``EnrollRequest`` (device
name, profile, hardware summary: no private data) and stores the device key, the server and the settings
in one state transaction, logging the request with the token and key redacted. An existing enrollment is
replaced only when ``force`` is set. Errors: :class:`edge_agent.errors.AgentError` (and the client's).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable

import arte
from arte.wire import EnrollRequest
from edge_agent.client import ServerClient, encode
from edge_agent.config import validate_setting
from edge_agent.errors import AgentError
from edge_agent.hardware import Hardware, match_profile
from edge_agent.state import State
from firmware_profiles import load_profiles

__all__ = ["enroll"]


def enroll(st: State, client_for: Callable[[], ServerClient], hw: Hardware, *, server_url: str, token: str,
           profile_id: str | None = None, device_name: str | None = None, data_path: Path | None = None,
           dataset_key: str | None = None, force: bool = False) -> dict[str, Any]:
    """Enroll with the server through ``client_for()``; returns what was stored (ids, profile, key file)."""
    if st.get("device_id") and not force:
        raise AgentError(f"already enrolled as device {st.get('device_id')} in {st.path}; "
                         "use --force to replace the enrollment")
    if profile_id is None:
        profiles = load_profiles()
        picked, why = match_profile(hw, profiles)
        if picked is None:
            raise AgentError("no firmware profile matches this device (" + "; ".join(why) + "); pass "
                             "--profile ID, one of " + ", ".join(sorted(profiles)))
        profile_id = picked.id
    updates = {"profile": validate_setting("profile", profile_id)}
    if data_path is not None:
        updates["data_path"] = validate_setting("data_path", str(data_path))
    if dataset_key is not None:
        updates["dataset_key"] = validate_setting("dataset_key", dataset_key)
    req = EnrollRequest(token=token, device_name=device_name or socket.gethostname(), profile_id=profile_id,
                        hardware=hw.summary(), agent_version=arte.__version__)
    with client_for() as client:
        resp, sent = client.enroll(req)
    redacted = encode(EnrollRequest(**{**req.__dict__, "token": "<redacted>"}))
    with st.transaction():
        st.write_device_key(resp.device_key)
        st.set(server_url=server_url.rstrip("/"), device_id=resp.device_id, cohort_id=resp.cohort_id,
               device_name=req.device_name, enrolled_at=resp.server_time, **updates)
        st.log_sent("enroll", "POST", sent.path, redacted, sent.status,
                    json.dumps({**json.loads(sent.response), "device_key": "<redacted>"}))
    return {"device_id": resp.device_id, "cohort_id": resp.cohort_id, "profile": profile_id,
            "server": server_url, "key_file": str(st.key_path)}
