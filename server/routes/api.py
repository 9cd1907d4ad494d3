"""The /api/v1 routes: parse, call one action, serialise. No rules live here."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server import schemas as s
from server.actions import accounts, conversations, invitations, messages, orgs, teams
from server.http import (
    JSON,
    actor_of,
    client_address,
    decode_cursor,
    encode_cursor,
    int_param,
    parse,
    parse_patch,
    path_id,
    query_id,
    route,
    services,
)

API = "/api/v1"


@route("POST", f"{API}/signup", "Create an organisation and its first admin", body=s.SignupBody,
       response=s.SignupResult, status=201, auth=False, errors=(403, 409, 422))
async def signup(request: Request) -> Response:
    body = await parse(request, s.SignupBody)
    result = await accounts.signup(
        services(request), org_name=body.org_name, name=body.name, email=body.email,
        password=body.password,
    )
    return JSON(result, status_code=201)


@route("POST", f"{API}/auth/login", "Log in with email and password", body=s.LoginBody,
       response=s.Session, auth=False, errors=(401, 422, 429))
async def login(request: Request) -> Response:
    body = await parse(request, s.LoginBody)
    result = await accounts.login(
        services(request), email=body.email, password=body.password,
        address=client_address(request),
    )
    return JSON(result)


@route("POST", f"{API}/auth/logout", "End this session (its sockets close too)", status=204,
       errors=(401,))
async def logout(request: Request) -> Response:
    actor = await actor_of(request)
    await accounts.logout(services(request), actor)
    return Response(status_code=204)


@route("GET", f"{API}/me", "The caller, their organisation and its policies", response=s.Me,
       errors=(401,))
async def me(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await accounts.me(services(request), actor))


@route("GET", f"{API}/org", "The caller's organisation", response=s.Org, errors=(401,))
async def get_org(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await orgs.get_org(services(request), actor))


@route("PATCH", f"{API}/org", "Rename the organisation or change its policies (admin)",
       body=s.OrgPatchBody, response=s.Org, errors=(401, 403, 422))
async def update_org(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)  # role checks come before validation (PROTOCOL v1.1)
    body = await parse(request, s.OrgPatchBody)
    return JSON(await orgs.update_org(services(request), actor, name=body.name,
                                      policies=body.policies))


@route("POST", f"{API}/org/trial", "Start the organisation's 7-day trial, once (admin)",
       response=s.Org, errors=(401, 403, 409))
async def start_trial(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await orgs.start_trial(services(request), actor))


@route("POST", f"{API}/members", "Add a member (admin): with a password, the user (201); "
       "without, an invitation by email (201, an Invitation)", body=s.MemberBody,
       response=(s.User, s.Invitation),
       status=201, errors=(401, 403, 409, 422))
async def create_member(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.MemberBody)
    user = await accounts.create_member(
        services(request), actor, email=body.email, name=body.name, role=body.role,
        password=body.password,
    )
    return JSON(user, status_code=201)


@route("PATCH", f"{API}/members/{{user_id}}", "Change a member's role, or deactivate them "
       "(admin): their sessions and sockets end at once", body=s.MemberPatchBody,
       response=s.User, errors=(401, 403, 404, 409, 422))
async def update_member(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)
    body = await parse(request, s.MemberPatchBody)
    return JSON(await accounts.update_member(
        services(request), actor, path_id(request, "user_id"), role=body.role,
        active=body.active,
    ))


@route("GET", f"{API}/members", "The organisation's members", response=s.UserList,
       query=("cursor", "limit"), errors=(401, 403))
async def list_members(request: Request) -> Response:
    actor = await actor_of(request)
    items, next_key = await accounts.list_members(
        services(request), actor, after=decode_cursor(request),
        limit=int_param(request, "limit", 100, 1, 500),
    )
    return JSON({"items": items, "next": encode_cursor(next_key)})


@route("GET", f"{API}/invitations", "The organisation's open invitations and how their "
       "mail fared (admin)", response=s.InvitationList, query=("cursor", "limit"),
       errors=(401, 403))
async def list_invitations(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)
    items, next_key = await invitations.list_invitations(
        services(request), actor, after=decode_cursor(request),
        limit=int_param(request, "limit", 100, 1, 500),
    )
    return JSON({"items": items, "next": encode_cursor(next_key)})


@route("DELETE", f"{API}/invitations/{{invitation_id}}", "Revoke an invitation (admin): "
       "its link stops working", status=204, errors=(401, 403, 404))
async def revoke_invitation(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)
    await invitations.revoke(services(request), actor, path_id(request, "invitation_id"))
    return Response(status_code=204)


@route("POST", f"{API}/bots", "Create a bot and its key (admin)", body=s.BotBody,
       response=s.BotResult, status=201, errors=(401, 403, 422))
async def create_bot(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.BotBody)
    return JSON(await accounts.create_bot(services(request), actor, name=body.name),
                status_code=201)


@route("POST", f"{API}/conversations", "Start a conversation", body=s.ConversationBody,
       response=s.Conversation, status=201, errors=(401, 402, 403, 404, 409, 422))
async def create_conversation(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.ConversationBody)
    targets = [
        {k: v for k, v in (("user_id", t.user_id), ("email", t.email),
                           ("patient_id", t.patient_id), ("patient", t.patient)) if v is not None}
        for t in body.to
    ]
    conversation = await conversations.create_conversation(
        services(request), actor, to=targets, subject=body.subject,
        phone_number_id=body.phone_number_id, channel=body.channel,
    )
    return JSON(conversation, status_code=201)


@route("GET", f"{API}/conversations", "The caller's inbox, most recent first",
       response=s.ConversationList,
       query=("kind", "team_id", "phone_number_id", "cursor", "limit"), errors=(401, 402, 422))
async def list_conversations(request: Request) -> Response:
    actor = await actor_of(request)
    items, next_key = await conversations.list_conversations(
        services(request), actor, kind=request.query_params.get("kind") or None,
        after=decode_cursor(request), limit=int_param(request, "limit", 50, 1, 200),
        team_id=query_id(request, "team_id"),
        phone_number_id=query_id(request, "phone_number_id"),
    )
    return JSON({"items": items, "next": encode_cursor(next_key)})


@route("GET", f"{API}/conversations/{{conversation_id}}", "One conversation",
       response=s.Conversation, errors=(401, 402, 404))
async def get_conversation(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await conversations.get_conversation(
        services(request), actor, path_id(request, "conversation_id")))


@route("PATCH", f"{API}/conversations/{{conversation_id}}", "Change a conversation's "
       "subject, or a patient conversation's channel (addition)",
       body=s.ConversationPatchBody, response=s.Conversation, errors=(401, 402, 403, 404, 422))
async def patch_conversation(request: Request) -> Response:
    actor = await actor_of(request)
    body, named = await parse_patch(request, s.ConversationPatchBody)
    return JSON(await conversations.update_conversation(
        services(request), actor, path_id(request, "conversation_id"),
        subject=body.subject, channel=body.channel, named=named))


@route("POST", f"{API}/conversations/{{conversation_id}}/messages",
       "Send a message (repeat with the same client_id: 200 with the first event)",
       body=s.MessageBody, response=s.Event, status=201,
       errors=(401, 402, 404, 409, 422, 503))
async def send_message(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.MessageBody)
    event, created = await messages.send_message(
        services(request), actor, path_id(request, "conversation_id"),
        client_id=body.client_id, body=body.body,
    )
    return JSON(event, status_code=201 if created else 200)


@route("GET", f"{API}/conversations/{{conversation_id}}/events", "The timeline after a seq",
       response=s.EventPage, query=("after", "limit"), errors=(401, 402, 404, 422))
async def list_events(request: Request) -> Response:
    actor = await actor_of(request)
    result = await conversations.list_events(
        services(request), actor, path_id(request, "conversation_id"),
        after=int_param(request, "after", 0, 0, 2**53 - 1),
        limit=int_param(request, "limit", 100, 1, 1000),
    )
    return JSON(result)


@route("POST", f"{API}/conversations/{{conversation_id}}/read", "Mark read up to a seq",
       body=s.ReadBody, status=204, errors=(401, 402, 404, 422))
async def mark_read(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.ReadBody)
    await conversations.mark_read(
        services(request), actor, path_id(request, "conversation_id"), body.seq
    )
    return Response(status_code=204)


def invite_token(request: Request) -> str:
    return request.path_params["token"]


@route("GET", f"{API}/invites/{{token}}", "What an invitation link is for (404 once used, "
       "revoked or expired)", response=s.InviteInfo, auth=False, errors=(404,))
async def describe_invite(request: Request) -> Response:
    return JSON(await invitations.describe(services(request), invite_token(request)))


@route("POST", f"{API}/invites/{{token}}/accept", "Accept an invitation: the account and a "
       "session", body=s.AcceptBody, response=s.AcceptResult, auth=False,
       errors=(401, 404, 409, 422, 429))
async def accept_invite(request: Request) -> Response:
    body = await parse(request, s.AcceptBody)
    return JSON(await invitations.accept(
        services(request), invite_token(request), name=body.name, password=body.password,
        org_name=body.org_name, address=client_address(request)))


@route("POST", f"{API}/teams", "Create a team (admin)", body=s.TeamBody, response=s.Team,
       status=201, errors=(401, 403, 409, 422))
async def create_team(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)
    body = await parse(request, s.TeamBody)
    return JSON(await teams.create_team(services(request), actor, name=body.name),
                status_code=201)


@route("GET", f"{API}/teams", "The organisation's teams and their members",
       response=s.TeamList, errors=(401, 403))
async def list_teams(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON({"items": await teams.list_teams(services(request), actor), "next": None})


@route("PATCH", f"{API}/teams/{{team_id}}", "Rename a team (admin)", body=s.TeamBody,
       response=s.Team, errors=(401, 403, 404, 422))
async def rename_team(request: Request) -> Response:
    actor = await actor_of(request)
    orgs.require_admin(actor)
    body = await parse(request, s.TeamBody)
    return JSON(await teams.rename_team(services(request), actor, path_id(request, "team_id"),
                                        name=body.name))


@route("PUT", f"{API}/teams/{{team_id}}/members/{{user_id}}", "Add a member to a team "
       "(admin; repeating it changes nothing)", status=204, errors=(401, 403, 404))
async def add_to_team(request: Request) -> Response:
    actor = await actor_of(request)
    await teams.add_to_team(services(request), actor, path_id(request, "team_id"),
                            path_id(request, "user_id"))
    return Response(status_code=204)


@route("DELETE", f"{API}/teams/{{team_id}}/members/{{user_id}}", "Remove a member from a "
       "team (admin)", status=204, errors=(401, 403, 404))
async def remove_from_team(request: Request) -> Response:
    actor = await actor_of(request)
    await teams.remove_from_team(services(request), actor, path_id(request, "team_id"),
                                 path_id(request, "user_id"))
    return Response(status_code=204)
