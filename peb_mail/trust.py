"""Decide whether a submission really comes from the student it names.

A From header is easy to forge, so grading needs more than a matching
address. ``service.sender_policy`` sets what is enough:

- ``none``: any match counts, including the sender's only open attempt.
- ``token``: the message must carry a valid reply token in a recipient
  address, or answer an email we sent in that attempt's thread.
- ``token+dmarc``: ``token``, and the topmost Authentication-Results header
  must come from a server in ``service.trusted_authserv_ids`` and say
  ``dmarc=pass`` for the From domain. Copies of the header added by other
  servers, or below ours, are ignored.
- ``dkim``: ``token``, and a DKIM signature that verifies (dkimpy) and whose
  ``d=`` domain is the From domain or a parent of it.

Mail that fails is held for review, never graded as the student.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import Callable

logger = logging.getLogger(__name__)

POLICIES = ("none", "token", "token+dmarc", "dkim")
# How a message was matched to its attempt, from strongest to weakest.
STRONG_MATCHES = ("thread", "token")

_DMARC_RE = re.compile(r"\bdmarc\s*=\s*(\w+)", re.I)
_HEADER_FROM_RE = re.compile(r"\bheader\.from\s*=\s*([^\s;]+)", re.I)
_DKIM_DOMAIN_RE = re.compile(rb"\bd\s*=\s*([^;\s]+)", re.I)

DnsLookup = Callable[..., bytes | None]


def check_sender(
    policy: str,
    *,
    matched_by: str,
    raw: bytes,
    from_address: str,
    trusted_authserv_ids: tuple[str, ...] = (),
    dns_lookup: DnsLookup | None = None,
) -> str | None:
    """Return None when the sender passes ``policy``, else the reason it fails."""
    if policy == "none":
        return None
    if matched_by not in STRONG_MATCHES:
        return (
            "no reply token and no thread of ours: the message was matched only "
            "because the sender has one open attempt"
        )
    if policy == "token":
        return None
    from_domain = from_address.rpartition("@")[2].lower()
    if policy == "token+dmarc":
        return _check_dmarc(raw, from_domain, trusted_authserv_ids)
    if policy == "dkim":
        return _check_dkim(raw, from_domain, dns_lookup)
    raise ValueError(f"unknown sender policy {policy!r}")


def _check_dmarc(raw: bytes, from_domain: str, trusted: tuple[str, ...]) -> str | None:
    headers = email.message_from_bytes(raw, policy=email.policy.compat32)
    results = headers.get_all("Authentication-Results") or []
    if not results:
        return "no Authentication-Results header"
    # Receiving servers add their header on top, so the first one is ours
    # when our MTA added one. Anything below it came with the message.
    top = " ".join(str(results[0]).split())
    authserv_id = top.split(";", 1)[0].strip().split(" ")[0].lower()
    if authserv_id not in {item.lower() for item in trusted}:
        return f"topmost Authentication-Results is from {authserv_id!r}, not a trusted server"
    verdict = _DMARC_RE.search(top)
    if verdict is None or verdict.group(1).lower() != "pass":
        return f"dmarc is {verdict.group(1) if verdict else 'missing'} in the trusted header"
    header_from = _HEADER_FROM_RE.search(top)
    if header_from and header_from.group(1).lower().strip('"') != from_domain:
        return f"dmarc passed for {header_from.group(1)!r}, not for the From domain {from_domain!r}"
    return None


def _check_dkim(
    raw: bytes, from_domain: str, dns_lookup: DnsLookup | None
) -> str | None:
    import dkim

    signatures = [
        value for name, value in _raw_headers(raw) if name.lower() == b"dkim-signature"
    ]
    if not signatures:
        return "no DKIM signature"
    for index, signature in enumerate(signatures):
        match = _DKIM_DOMAIN_RE.search(signature)
        domain = match.group(1).decode("ascii", "replace").lower() if match else ""
        aligned = domain == from_domain or from_domain.endswith("." + domain)
        if not aligned:
            continue
        try:
            verifier = dkim.DKIM(raw)
            ok = (
                verifier.verify(idx=index, dnsfunc=dns_lookup)
                if dns_lookup
                else verifier.verify(idx=index)
            )
        except Exception as exc:  # dkimpy raises many kinds for broken input
            logger.info("DKIM verification error for d=%s: %s", domain, exc)
            ok = False
        if ok:
            return None
    return f"no valid DKIM signature for the From domain {from_domain!r}"


def _raw_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
    return headers
