"""The AsyncAPI 3.0 document for member-service developers: the topics and webhook payloads of
profile sync, generated from the event models so it never drifts from the code, and the third
channel, SCIM 2.0 provisioning, described where it differs (the hub calls the service's SCIM
server with RFC 7644 requests rather than sending these events)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from schemas.ssf import SecurityEventToken

from schemas.events import (
    AccountRestricted,
    AccountRestrictionLifted,
    LinkCreated,
    LinkRevoked,
    ProfileChanged,
    ProfileSnapshot,
    ProfileUpdated,
    RightsRequested,
)

#: What a member service receives, on its webhook and on its topic.
_TO_SERVICES = ("profileUpdated", "profileSnapshot", "linkRevoked", "rightsRequested", "accountRestricted", "accountRestrictionLifted")

REF = "#/components/schemas/{model}"

_SIGNATURE_HEADERS = {
    "type": "object",
    "required": ["webhook-id"],
    "properties": {
        "webhook-id": {"type": "string", "description": "The message id; the same on every retry of one delivery."},
        "webhook-timestamp": {"type": "string", "description": "Seconds since the epoch when the attempt was signed (webhooks only)."},
        "webhook-signature": {
            "type": "string",
            "description": "Space-separated `v1,<base64 HMAC-SHA256>` of `webhook-id.webhook-timestamp.body`, keyed with "
            "the base64-decoded part of your `whsec_` secret (Standard Webhooks; webhooks only). Verify it with the "
            "standardwebhooks library.",
        },
    },
}


def _collect(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models.values():
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def document(*, issuer: str, bootstrap: str | None = None, topic_prefix: str = "", webhook_timeout: float = 10) -> dict[str, Any]:
    messages = {
        "profileUpdated": ProfileUpdated,
        "profileSnapshot": ProfileSnapshot,
        "profileChanged": ProfileChanged,
        "linkCreated": LinkCreated,
        "linkRevoked": LinkRevoked,
        "rightsRequested": RightsRequested,
        "accountRestricted": AccountRestricted,
        "accountRestrictionLifted": AccountRestrictionLifted,
    }
    component_messages = {
        name: {
            "name": model.model_fields["type"].default,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=model.__name__)},
        }
        for name, model in messages.items()
    }
    for name in _TO_SERVICES:
        component_messages[name]["headers"] = _SIGNATURE_HEADERS
        component_messages[name]["bindings"] = {
            "kafka": {"key": {"type": "string", "description": "The person's sub: one person's messages stay in order."}}
        }
    component_messages["securityEventToken"] = {
        "name": "secevent+jwt",
        "title": "SecurityEventToken",
        "summary": "A signed Security Event Token (CAEP, RISC, SSF verification) about a person linked to your service.",
        "contentType": "application/secevent+jwt",
        "description": "The body is the compact JWT; its payload, once the signature is verified against the hub's JWKS "
        "(the `jwks_uri` of /.well-known/ssf-configuration), is the schema below.",
        "payload": {"$ref": REF.format(model="SecurityEventToken")},
    }
    schemas = _collect(messages)
    schemas.update(_collect({"securityEventToken": SecurityEventToken}))
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "OneSignIn profile sync",
            "version": "1.0.0",
            "description": (
                "Changes to a person's basic account details reach every member service they linked, on the "
                "service's webhook (signed as Standard Webhooks) and/or its own Kafka topic. Deliveries are "
                "state-based and at least once: each carries the whole profile the service may see and its "
                "version; keep the highest version per sub and ignore older ones. Notices (link.revoked, "
                "rights.requested, account.restricted, account.restriction_lifted) are events, delivered at least "
                "once with the same id on every retry: deduplicate on it. Answer a webhook with any 2xx "
                f"within {webhook_timeout:g} s; a 429 or 503 with Retry-After delays that delivery as asked; 410 disables the endpoint. "
                "A service may instead (or also) have its SCIM 2.0 server provisioned (channel scim): the same "
                "state, sent as SCIM requests rather than these events."
            ),
        },
        "servers": {
            "kafka": {"host": (bootstrap or "kafka.example.com:9092").split(",")[0], "protocol": "kafka", "description": "The group's Kafka cluster."},
            "hub": {"host": urlsplit(issuer).netloc, "protocol": urlsplit(issuer).scheme, "description": "The hub (JSON Schemas under /schemas/)."},
        },
        "channels": {
            "serviceTopic": {
                "address": topic_prefix + "onesignin.service.{client_id}.v1",
                "title": "A member service's own topic",
                "description": "Keyed by sub. Ask the hub's operators for the bootstrap servers and your credentials; read "
                "it with your own consumer group; the ACLs in the README limit each "
                "service to its own topic.",
                "parameters": {"client_id": {"description": "Your service's client_id."}},
                "servers": [{"$ref": "#/servers/kafka"}],
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in _TO_SERVICES},
            },
            "webhook": {
                "address": None,
                "title": "A member service's webhook",
                "description": "POSTed to the URL registered with `onesignin services add --webhook-url`. Headers: "
                "webhook-id, webhook-timestamp, webhook-signature.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in _TO_SERVICES},
            },
            "scim": {
                "address": "{scim_base_url}/Users",
                "title": "A member service's SCIM 2.0 server (RFC 7643, RFC 7644)",
                "description": "Set with `onesignin services add|update --scim-base-url URL --scim-token TOKEN`; the hub "
                "calls it with `Authorization: Bearer TOKEN` (or a token it gets from `--scim-token-url` with the client credentials "
                "grant). On link (and relink, resync): the User whose externalId "
                "is the person's sub is looked for and patched (`active: true`), else created with `POST /Users`; its "
                "SCIM id is remembered per link. On a change of a claim the service may see: `PATCH /Users/{id}` "
                "replacing the attributes mapped from its visible claims (userName: the email address if visible, "
                "else the sub; externalId; name.formatted/givenName/familyName and displayName; emails; phoneNumbers; "
                "addresses; locale; timezone) and removing those whose claim is empty; never an attribute of a claim "
                "outside its scopes. On unlink, cancellation or restriction: `PATCH` `active: false`. On erasure of "
                "the hub account: `DELETE /Users/{id}`. State-based and at least once, retried, quarantined and "
                "given up as webhooks are; a 429 or 503 with Retry-After is not retried sooner than asked.",
                "parameters": {"scim_base_url": {"description": "Your SCIM server's base URL (…/scim/v2)."}},
                "messages": {},
            },
            "sharedSignalsPush": {
                "address": None,
                "title": "A member service's Shared Signals push endpoint (RFC 8935)",
                "description": "POSTed to the stream's delivery.endpoint_url (set with POST /api/v1/ssf/stream) with "
                "Content-Type application/secevent+jwt and the stream's authorization_header. Answer 202; answer 400 "
                'with {"err", "description"} to refuse a SET for good (not retried); anything else is retried like a notice.',
                "messages": {"securityEventToken": {"$ref": "#/components/messages/securityEventToken"}},
            },
            "sharedSignalsPoll": {
                "address": "/api/v1/ssf/poll/{id}",
                "title": "A member service's Shared Signals poll endpoint (RFC 8936)",
                "description": 'POST {"ack": [...], "setErrs": {...}, "maxEvents": n, "returnImmediately": bool} with the '
                'service\'s client-credentials token; the answer is {"sets": {jti: SET}, "moreAvailable": bool}. A SET '
                "comes again until acknowledged.",
                "parameters": {"id": {"description": "Your stream's stream_id."}},
                "servers": [{"$ref": "#/servers/hub"}],
                "messages": {"securityEventToken": {"$ref": "#/components/messages/securityEventToken"}},
            },
            "hubProfile": {
                "address": topic_prefix + "onesignin.profile.v1",
                "title": "The hub's own change feed (internal)",
                "description": "Read only by the sync workers (group onesignin-sync). Carries no personal data.",
                "servers": [{"$ref": "#/servers/kafka"}],
                "messages": {
                    "profileChanged": {"$ref": "#/components/messages/profileChanged"},
                    "linkCreated": {"$ref": "#/components/messages/linkCreated"},
                },
            },
        },
        "operations": {
            "receiveOnServiceTopic": {
                "action": "receive",
                "channel": {"$ref": "#/channels/serviceTopic"},
                "summary": "Your service consumes its topic.",
            },
            "receiveWebhook": {
                "action": "receive",
                "channel": {"$ref": "#/channels/webhook"},
                "summary": "Your service's endpoint receives signed POSTs.",
                "bindings": {"http": {"method": "POST"}},
            },
            "provisionScim": {
                "action": "send",
                "channel": {"$ref": "#/channels/scim"},
                "summary": "The hub provisions Users at your SCIM server (RFC 7644 requests; no events).",
                "bindings": {"http": {"method": "PATCH"}},
            },
            "receiveSharedSignalsPush": {
                "action": "receive",
                "channel": {"$ref": "#/channels/sharedSignalsPush"},
                "summary": "Your stream's endpoint receives pushed SETs.",
                "bindings": {"http": {"method": "POST"}},
            },
            "receiveSharedSignalsPoll": {
                "action": "receive",
                "channel": {"$ref": "#/channels/sharedSignalsPoll"},
                "summary": "Your service polls its stream and acknowledges what it processed.",
                "bindings": {"http": {"method": "POST"}},
            },
            "publishHubProfile": {
                "action": "send",
                "channel": {"$ref": "#/channels/hubProfile"},
                "summary": "The hub's outbox relay publishes every committed change.",
            },
        },
        "components": {
            "messages": component_messages,
            "schemas": schemas,
        },
    }
