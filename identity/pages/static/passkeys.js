// The passkey ceremony (WebAuthn), the one part of One Sign In's pages that needs JavaScript.
// Each form marked data-passkey carries the options its page's ceremony started with
// (data-options, JSON from the server); this script asks the browser for a credential, puts the
// browser's answer (JSON) into the form's hidden "credential" field and posts the form as usual,
// with its CSRF token. Without passkey support the forms stay hidden and the page's note, which
// says what to do instead, stays shown. A sign-in form with data-conditional also offers the
// person's passkeys in the email field's autofill (conditional mediation), where the browser can.
(() => {
  "use strict";

  const supported = typeof window.PublicKeyCredential === "function" && !!navigator.credentials;

  function fromB64url(value) {
    const base64 = value.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((value.length + 3) % 4);
    return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer;
  }

  function toB64url(buffer) {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creationOptions(json) {
    if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: fromB64url(json.challenge),
      user: Object.assign({}, json.user, { id: fromB64url(json.user.id) }),
      excludeCredentials: (json.excludeCredentials || []).map((c) => Object.assign({}, c, { id: fromB64url(c.id) })),
    });
  }

  function requestOptions(json) {
    if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: fromB64url(json.challenge),
      allowCredentials: (json.allowCredentials || []).map((c) => Object.assign({}, c, { id: fromB64url(c.id) })),
    });
  }

  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") return credential.toJSON();
    const r = credential.response;
    const response = { clientDataJSON: toB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toB64url(r.attestationObject);
      response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
    } else {
      response.authenticatorData = toB64url(r.authenticatorData);
      response.signature = toB64url(r.signature);
      if (r.userHandle) response.userHandle = toB64url(r.userHandle);
    }
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults(),
      response,
    };
  }

  // The words come from the page (data-* attributes of the status line), in the page's language.
  const MESSAGES = {
    NotAllowedError: "notAllowed",
    InvalidStateError: "invalidState",
    AbortError: "",
  };

  function say(form, error) {
    const status = form.querySelector("[data-passkey-status]");
    if (!status) return;
    const known = error && Object.prototype.hasOwnProperty.call(MESSAGES, error.name);
    const key = known ? MESSAGES[error.name] : "failed";
    status.textContent = key ? status.dataset[key] || "" : "";
  }

  function post(form, credential) {
    form.elements.credential.value = JSON.stringify(credentialJSON(credential));
    form.submit();
  }

  function setUp(form) {
    const kind = form.dataset.passkey;
    const options = JSON.parse(form.dataset.options);
    const note = form.parentElement.querySelector("[data-passkey-unsupported]");
    if (note) note.hidden = true;
    form.hidden = false;
    let conditional = null;

    form.addEventListener("submit", async (event) => {
      if (form.elements.credential.value) return;
      event.preventDefault();
      if (!form.reportValidity()) return;
      say(form, { name: "AbortError" });
      if (conditional) conditional.abort();
      try {
        if (kind === "register") {
          const publicKey = creationOptions(options);
          publicKey.extensions = Object.assign({}, publicKey.extensions, { credProps: true });
          post(form, await navigator.credentials.create({ publicKey }));
        } else {
          post(form, await navigator.credentials.get({ publicKey: requestOptions(options) }));
        }
      } catch (error) {
        say(form, error);
      }
    });

    if (form.dataset.conditional && typeof PublicKeyCredential.isConditionalMediationAvailable === "function") {
      PublicKeyCredential.isConditionalMediationAvailable().then(async (available) => {
        if (!available) return;
        conditional = new AbortController();
        try {
          const credential = await navigator.credentials.get({
            mediation: "conditional",
            publicKey: requestOptions(options),
            signal: conditional.signal,
          });
          if (credential) post(form, credential);
        } catch (error) {
          if (error && error.name !== "AbortError") say(form, error);
        }
      }, () => {});
    }
  }

  // WebAuthn Level 3 signals, where the browser has them, so that its passkey manager matches
  // the hub: a passkey the hub does not know (removed, or from an erased account), and the
  // account's passkeys as they are now (one removed elsewhere disappears from the list).
  function signal() {
    const signIn = document.querySelector("form[data-passkey][data-unknown-credential]");
    if (signIn && typeof PublicKeyCredential.signalUnknownCredential === "function") {
      const rpId = JSON.parse(signIn.dataset.options).rpId;
      PublicKeyCredential.signalUnknownCredential({ rpId, credentialId: signIn.dataset.unknownCredential }).catch(() => {});
    }
    const listed = document.querySelector("[data-passkey-user]");
    const adding = document.querySelector("form[data-passkey=register]");
    if (listed && adding && typeof PublicKeyCredential.signalAllAcceptedCredentials === "function") {
      const rpId = JSON.parse(adding.dataset.options).rp.id;
      PublicKeyCredential.signalAllAcceptedCredentials({
        rpId,
        userId: listed.dataset.passkeyUser,
        allAcceptedCredentialIds: listed.dataset.passkeyAccepted.split(" ").filter(Boolean),
      }).catch(() => {});
    }
  }

  if (!supported) return;
  for (const form of document.querySelectorAll("form[data-passkey]")) setUp(form);
  signal();
})();
