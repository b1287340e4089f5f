"""Never a password in a message: what every error, log line and listing that may quote a
database or broker URL passes through (``redact_url``), and the passwords of this process's
settings, noted where they are read (``remember_secrets``)."""

from __future__ import annotations

import re
from urllib.parse import unquote

# A password in a URL's user info: ``scheme://user:secret@host`` (up to the last ``@`` of the
# token, as a password may hold one), then, for malformed URLs (``postgres:/u:secret@h``,
# ``postgresql//u:secret@h``, no scheme at all), anything else shaped like ``user:secret@``.
_USERINFO = re.compile(r"(://[^\s:/@]*):[^\s]*@")
_USERINFO_MALFORMED = re.compile(r"((?:^|[\s/'\"(=,;])[^\s:/@'\"]*):(?!//)[^\s]*@")
# ``password=...`` as a URL query parameter or a libpq keyword.
_PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&;\s])(?:password|passwd|pwd)=)[^&;\s]*")


# Passwords seen in the settings of this process (see ``remember_secrets``): hidden wherever
# they appear, also where no pattern above recognises them (a password with a space in it).
_SECRETS: set[str] = set()


def remember_secrets(url: str | None) -> None:
    """Note the password of ``url`` (well-formed or not, with spaces or tabs in it), so that
    ``redact_url`` hides it in any text from now on. Called where settings are read, at each
    process edge."""
    if not url:
        return
    url = str(url)
    found = _setting_passwords(url)
    for pattern in (_USERINFO, _USERINFO_MALFORMED):
        found += [m.group(0)[len(m.group(1)) + 1:-1] for m in pattern.finditer(url)]
    found += [url[m.end(1):m.end()] for m in _PASSWORD_PARAM.finditer(url)]
    for secret in filter(None, found):
        # As given, as a driver decodes it (%20), and as a one-line message shows it (a tab
        # or a run of spaces as one space).
        for form in {secret, unquote(secret), " ".join(secret.split()),
                     " ".join(unquote(secret).split())}:
            if len(form) >= 3 and form != "***":
                _SECRETS.add(form)


def _setting_passwords(url: str) -> list[str]:
    """The password of a URL given as a setting, read two ways, as the patterns for free text
    stop at a space or a tab: as ``urllib`` reads it (the user info is the part of the host
    field, up to the first ``/``, ``?`` or ``#``, before its last ``@``), and up to the last
    ``@`` of the whole URL (a password with an unescaped ``/`` in it)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[\w+.-]*", scheme):
        return []
    found = []
    for field in (re.split(r"[/?#]", rest, maxsplit=1)[0], rest):
        userinfo, at, _host = field.rpartition("@")
        _user, colon, password = userinfo.partition(":")
        if at and colon and "/" not in _user:
            found.append(password)
    return found


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message that may hold URLs) with every password replaced by
    ``***``, safe to print or log. Works on malformed URLs too: anything shaped like
    ``user:secret@`` or ``password=secret`` is hidden, and so is any password that
    ``remember_secrets`` was told of."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1:***@", text)
    text = _USERINFO_MALFORMED.sub(r"\1:***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)
