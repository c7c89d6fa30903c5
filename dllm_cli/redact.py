"""Secrets by content: what a credential looks like inside a text file, and its redaction in place.

Knows: the rule set below (token shapes published by their vendors and collected by gitleaks'
default config and detect-secrets' plugins; see docs/cli.md, "Secrets"), Shannon entropy for the
keyword rule, and how to replace each secret with `[dllm-redacted:<kind>]` so the rest of the file
still gives the model its context. `redact(text)` returns the redacted text and the findings
(kind and 1-based line), which context.py reports in --show-context, --json and on stderr.
Must not: read files, import torch, or decide which files are sent (context.py does; files that
are secret by name are never read at all).

Rules, in priority order (an overlapping later match is dropped):
  private-key         the body of every `-----BEGIN ... PRIVATE KEY-----` block (RSA, DSA, EC,
                      OPENSSH, ENCRYPTED, PKCS#8, PGP `PRIVATE KEY BLOCK`, RFC 4716 `---- BEGIN SSH2
                      ENCRYPTED PRIVATE KEY ----`), also with `\\n` escapes inside a JSON string, and
                      to the end of the text when the END line is missing; the BEGIN/END lines stay
  putty-private-key   a PuTTY .ppk's `Private-Lines: N` and the N lines after it, and `Private-MAC:`
  base64-pem          base64 of a PEM block (`LS0tLS1CRUdJTi...`: kubeconfig `client-key-data`,
                      Kubernetes secrets)
  aws-access-key-id   AKIA / ASIA / ABIA / ACCA / A3T. + 16 upper-case letters or digits
  aws-secret-access-key  40 base64 characters assigned to a name with `aws` and `secret`
  github-token        ghp_ gho_ ghu_ ghs_ ghr_ + 36 or more, github_pat_ + 22 or more
  gitlab-token        glpat- + 20 or more
  slack-token         xoxa- xoxb- xoxp- xoxo- xoxs- xoxr- tokens, xapp- app tokens, hooks.slack.com URLs
  stripe-key          sk_live_ sk_test_ rk_live_ rk_test_ secret and restricted keys, whsec_ secrets
  google-api-key      AIza + 35
  openai-key          sk- (sk-proj-, sk-ant-, sk-svcacct-) + 32 or more
  huggingface-token   hf_ + 30 or more;  npm-token  npm_ + 36;  pypi-token  pypi-AgEIcHlwaS5vcmc...
  sendgrid-key        SG.<22>.<43>;  twilio-key  SK + 32 hex;  azure-storage-key  AccountKey=<80+>
  jwt                 eyJ...eyJ...signature (three base64url parts)
  url-password        the password of scheme://user:password@host
  password / secret / token / api-key   a value assigned (`=`, `:`, `:=`, `=>`, a keyword argument,
                      a YAML/INI/.env line, a JSON member) to a name containing password, passwd,
                      pwd, passphrase, secret, token, api key, access key, private key, auth key,
                      credential or key-data, when the value is a literal of at least 8 characters,
                      not a reference (`$VAR`, `${...}`, `%(x)s`, `<...>`, a call, a dotted name),
                      not words (no whitespace), not a URL or a file path,
                      with Shannon entropy of at least 3.0 bits per character and a digit or
                      symbol in it or at least 20 characters
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

MARKER = "[dllm-redacted:"  # a redaction reads "[dllm-redacted:github-token]"


@dataclass(frozen=True)
class Finding:
    kind: str
    line: int  # 1-based line of the text where the secret starts
    start: int  # character offsets of the redacted span in the original text
    end: int


def marker(kind: str) -> str:
    return f"{MARKER}{kind}]"


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# --- the rules: (kind, compiled pattern, the group that is the secret) -------------------------

_PRIVATE_KEY = re.compile(
    r"(?P<begin>-{4,5} ?BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?) ?-{4,5})"
    r"(?P<body>.*?)(?=-{4,5} ?END (?P=label) ?-{4,5}|\Z)", re.DOTALL)
_PUTTY = re.compile(r"^Private-Lines: *(\d+)[ \t]*\r?$", re.MULTILINE)
_PUTTY_MAC = re.compile(r"^Private-MAC: *(\S+)", re.MULTILINE)

_TOKENS: tuple[tuple[str, re.Pattern[str], int], ...] = tuple(
    (kind, re.compile(pattern), group) for kind, pattern, group in (
        ("base64-pem", r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]{16,}", 0),
        ("aws-access-key-id", r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])", 0),
        ("aws-secret-access-key", r"(?i)aws[\w.\-]{0,20}?secret[\w.\-]{0,20}['\"]?\s*(?:=|:|=>)\s*['\"]?"
                                  r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", 1),
        ("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", 0),
        ("gitlab-token", r"\bglpat-[A-Za-z0-9_\-]{20,}", 0),
        ("slack-token", r"\b(?:xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-\d-[A-Za-z0-9\-]{10,})", 0),
        ("slack-token", r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+", 0),
        ("stripe-key", r"\b(?:[sr]k_(?:live|test)_[A-Za-z0-9]{10,99}|whsec_[A-Za-z0-9]{20,})\b", 0),
        ("google-api-key", r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])", 0),
        ("openai-key", r"\bsk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_\-]{32,}", 0),
        ("huggingface-token", r"\bhf_[A-Za-z0-9]{30,}\b", 0),
        ("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b", 0),
        ("pypi-token", r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}", 0),
        ("sendgrid-key", r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b", 0),
        ("twilio-key", r"\bSK[0-9a-fA-F]{32}\b", 0),
        ("azure-storage-key", r"AccountKey=([A-Za-z0-9+/=]{80,100})", 1),
        ("jwt", r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}", 0),
        ("url-password", r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]+:([^/\s@'\"]{3,})@", 1),
    ))

_NAME = (r"[A-Za-z0-9_.\-]*?(?P<word>passwd|password|passphrase|pwd|secret|token|api[_\-]?key|apikey|"
         r"access[_\-]?key|private[_\-]?key|auth[_\-]?key|credential|key[_\-]?data)[A-Za-z0-9_.\-]*")
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_])['\"]?" + _NAME + r"['\"]?"
    r"(?:\s*:\s*[A-Za-z_][\w\[\]., |]*?)?"  # a type annotation: `token: str = ...`
    r"\s*(?::=|=>|=|:)\s*"
    r"(?:(?P<q>['\"`])(?P<quoted>[^'\"`\r\n]*)(?P=q)|(?P<bare>[^\s'\"`,;#=][^\s'\"`,;#]*))")
_REFERENCE = re.compile(r"^(?:\$|%\(|\{\{|<.*>$|[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+$|.*\(.*\)?$)")


def _keyword_kind(word: str) -> str:
    w = word.lower().replace("-", "").replace("_", "")
    if w in ("passwd", "password", "passphrase", "pwd"):
        return "password"
    if w == "token":
        return "token"
    if w in ("apikey", "accesskey", "authkey"):
        return "api-key"
    return "secret"


def _keyword_value(value: str, bare: bool) -> bool:
    """A literal that looks like a real credential, not code or a placeholder."""
    if len(value) < 8 or _REFERENCE.match(value):
        return False
    if bare and (re.fullmatch(r"[A-Za-z_]+", value) or re.search(r"[()\[\]{}]", value)):
        return False  # a bare identifier, call or subscript: code, not a literal
    if value.lower() in ("changeme", "password", "xxxxxxxx", "********", "none", "null", "true", "false"):
        return False
    if re.search(r"\s", value) or re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://|\.{0,2}/|~/", value):
        return False  # words, a URL (its password has its own rule), a file path
    has_mixed = bool(re.search(r"[0-9]|[^A-Za-z0-9\s]", value))
    return entropy(value) >= 3.0 and (has_mixed or len(value) >= 20)


# --- finding and redacting ----------------------------------------------------------------------

def find(text: str) -> list[Finding]:
    """Every secret in `text`, in order of position, without overlaps."""
    spans: list[tuple[int, int, str]] = []

    def add(start: int, end: int, kind: str) -> None:
        if end > start and not any(s < end and start < e for s, e, _ in spans):
            spans.append((start, end, kind))

    for m in _PRIVATE_KEY.finditer(text):
        add(m.start("body"), m.end("body"), "private-key")
    if "PuTTY-User-Key-File-" in text:
        for m in _PUTTY.finditer(text):
            end = m.end()
            for _ in range(int(m.group(1))):
                nl = text.find("\n", end + 1)
                end = len(text) if nl < 0 else nl
            add(m.start(), end, "putty-private-key")
        for m in _PUTTY_MAC.finditer(text):
            add(m.start(1), m.end(1), "putty-private-key")
    for kind, pattern, group in _TOKENS:
        for m in pattern.finditer(text):
            add(m.start(group), m.end(group), kind)
    for m in _ASSIGNMENT.finditer(text):
        bare = m.group("bare") is not None
        name = "bare" if bare else "quoted"
        if _keyword_value(m.group(name), bare):
            add(m.start(name), m.end(name), _keyword_kind(m.group("word")))
    spans.sort()
    return [Finding(kind, text.count("\n", 0, s) + 1, s, e) for s, e, kind in spans]


def redact(text: str) -> tuple[str, tuple[Finding, ...]]:
    """`text` with every secret replaced by its marker, and the findings (offsets in `text`)."""
    findings = find(text)
    if not findings:
        return text, ()
    out: list[str] = []
    at = 0
    for f in findings:
        out.append(text[at:f.start])
        piece = text[f.start:f.end]
        if f.kind in ("private-key", "putty-private-key") and "\n" in piece:
            lead = "\n" if piece.startswith(("\n", "\r\n")) else ""
            tail = "\n" if piece.endswith("\n") else ""
            out.append(f"{lead}{marker(f.kind)}{tail}")
        else:
            out.append(marker(f.kind))
        at = f.end
    out.append(text[at:])
    return "".join(out), tuple(findings)
