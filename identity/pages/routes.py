"""The URLs of the pages for people, and of an authorization request's interaction pages."""

from __future__ import annotations

from aiohttp import web

from identity.pages import (
    account,
    email_change,
    linked_services,
    passkeys,
    password,
    policy,
    privacy,
    register,
    sessions,
    sign_in,
    two_step,
)
from identity.pages import rights as rights_pages
from identity.web import language
from identity.web.responses import redirect


async def home(request: web.Request) -> web.StreamResponse:
    return redirect("/account")


def add_routes(app: web.Application) -> None:
    r = app.router
    # Interactions of an authorization request (it resumes at /i/{uid}/resume, a provider route)
    r.add_get("/i/{uid}", sign_in.interaction_page)
    r.add_post("/i/{uid}/login", sign_in.interaction_login)
    r.add_post("/i/{uid}/consent", sign_in.interaction_consent)
    r.add_post("/i/{uid}/passkey", passkeys.interaction_sign_in)
    # Pages
    r.add_get("/", home)
    r.add_get("/privacy", policy.privacy_page)
    r.add_get("/language/{lang}", language.pick)
    r.add_get("/sign-in", sign_in.sign_in_page)
    r.add_post("/sign-in", sign_in.sign_in)
    r.add_post("/sign-out", sign_in.sign_out)
    r.add_get("/sign-in/code", two_step.code_page)
    r.add_post("/sign-in/code", two_step.code)
    r.add_post("/sign-in/passkey", passkeys.sign_in)
    r.add_post("/sign-in/code/passkey", passkeys.second_step)
    r.add_get("/register", register.register_page)
    r.add_post("/register", register.register)
    r.add_get("/verify-email", register.verify_email_page)
    r.add_post("/verify-email", register.verify_email)
    r.add_post("/verify-email/resend", register.resend_verification)
    r.add_get("/guardian/confirm", register.guardian_page)
    r.add_post("/guardian/confirm", register.guardian_confirm)
    r.add_get("/reset-password", password.reset_page)
    r.add_post("/reset-password", password.reset_request)
    r.add_get("/reset-password/confirm", password.reset_confirm_page)
    r.add_post("/reset-password/confirm", password.reset_confirm)
    r.add_get("/account", account.account_page)
    r.add_post("/account/details", account.edit_details)
    r.add_get("/account/email/confirm", email_change.confirm_page)
    r.add_post("/account/email/confirm", email_change.confirm)
    r.add_post("/account/email/resend", email_change.resend)
    r.add_post("/account/email/cancel", email_change.cancel)
    r.add_get("/account/export", privacy.export_download)
    r.add_get("/account/delete", privacy.delete_page)
    r.add_post("/account/delete", privacy.delete)
    r.add_get("/account/guardian", privacy.guardian_page)
    r.add_post("/account/guardian", privacy.guardian_request)
    r.add_get("/account/unlink/{client_id}", linked_services.unlink_page)
    r.add_post("/account/unlink/{client_id}", linked_services.unlink)
    r.add_get("/account/cancel", linked_services.cancel_page)
    r.add_get("/account/password", password.change_page)
    r.add_post("/account/password", password.change)
    r.add_get("/account/two-step", two_step.settings_page)
    r.add_post("/account/two-step", two_step.enrol)
    r.add_post("/account/two-step/recovery-codes", two_step.new_recovery_codes)
    r.add_post("/account/two-step/remove", two_step.remove)
    r.add_post("/account/passkeys", passkeys.add)
    r.add_get("/account/passkeys/{id}/remove", passkeys.remove_page)
    r.add_post("/account/passkeys/{id}/remove", passkeys.remove)
    r.add_post("/account/sessions/end", sessions.end_one)
    r.add_post("/account/sessions/end-all", sessions.end_all)
    r.add_get("/account/rights", rights_pages.rights_page)
    r.add_post("/account/rights", rights_pages.open_from_page)
