"""Secrets planted in tracked files for the context and pipeline tests: every kind redact.py knows.
All values are made up in the vendors' published shapes; none is a real credential.

PLANTED: kind → (path, file text, the secret substrings that must never reach the model).
NAMED_SECRETS: files that are secret by name: never read, never sent.
KEPT: text around the secrets that must still reach the model (the file still gives context).
"""

from __future__ import annotations

PEM_BODY = "MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"


def _pem(label: str, dashes: str = "-----") -> str:
    space = " " if len(dashes) == 4 else ""
    return f"{dashes}{space}BEGIN {label}{space}{dashes}\n{PEM_BODY}{dashes}{space}END {label}{space}{dashes}\n"


PLANTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "aws-access-key-id": ("config.py", 'AWS_ACCESS_KEY_ID = "AKIAQYLPMN5HHHFPZAM2"\n', ("AKIAQYLPMN5HHHFPZAM2",)),
    "aws-secret-access-key": ("config.py", 'AWS_SECRET_ACCESS_KEY = "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"\n',
                              ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8Zq4Wm2n",)),
    "github-token": ("settings.py", 'GITHUB_TOKEN = "ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On1"\n'
                     'PAT = "github_pat_11ABCDEFG0abcdefghijklmn_opqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567"\n',
                     ("ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On1", "github_pat_11ABCDEFG0abcdefghijklmn")),
    "slack-token": ("notify.py", 'SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"\n'
                    'HOOK = "https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx"\n',
                    ("xoxb-123456789012-1234567890123", "abcdefghijklmnopqrstuvwx")),
    "stripe-key": ("billing.py",
                   'STRIPE_KEY = "sk_live_51HxYzAbCdEfGhIjKlMnOpQr"\nRESTRICTED = "rk_test_4eC39HqLyjWDar"\n',
                   ("sk_live_51HxYzAbCdEfGhIjKlMnOpQr", "rk_test_4eC39HqLyjWDar")),
    "google-api-key": ("maps.js", 'const key = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";\n',
                       ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",)),
    "openai-key": ("llm.py", 'client = OpenAI(api_key="sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0123")\n',
                   ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0123",)),
    "private-key": ("deploy/keys.txt", "".join(_pem(label) for label in (
        "RSA PRIVATE KEY", "DSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK")) + _pem("SSH2 ENCRYPTED PRIVATE KEY", "----")
        + '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B\\n-----END PRIVATE KEY-----\\n"}\n',
        ("MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun", "VTLw7onLRnrq0",
         "MIIEvQIBADANBgkqhkiG9w0B")),
    "putty-private-key": ("deploy/laptop-key.txt", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"
                          "Comment: me@laptop\nPublic-Lines: 1\nAAAAC3NzaC1lZDI1NTE5AAAAIGm3nXjT8V5m3Ew\n"
                          "Private-Lines: 1\nAAAAIFppbW9yZXNlY3JldGtleWJ5dGVzaGVyZQ==\n"
                          "Private-MAC: 8f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a\n",
                          ("AAAAIFppbW9yZXNlY3JldGtleWJ5dGVzaGVyZQ==", "8f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c")),
    "base64-pem": ("deploy/cluster.yaml", "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n"
                   "    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFcEFJQkFBS0NBUUVB\n",
                   ("LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFcEFJQkFBS0NBUUVB",)),
    "jwt": ("deploy/cluster.yaml",
            "    token: eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlc2ln\n",
            ("eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ",)),
    "url-password": ("db.py", 'URL = "postgres://admin:S3cr3tP4ss@db.internal/app"\n', ("S3cr3tP4ss",)),
    "password": ("db.py", 'connect(host="db", password="Zq8#kL2!vN9@xR4$")\n', ("Zq8#kL2!vN9@xR4$",)),
    "token": ("ci.yml", "env:\n  DEPLOY_TOKEN: 9f8e7d6c5b4a39281706f5e4d3c2b1a0\n",
              ("9f8e7d6c5b4a39281706f5e4d3c2b1a0",)),
    "api-key": ("client.ts", 'const apiKey: string = "AbC123dEf456GhI789jKl";\n', ("AbC123dEf456GhI789jKl",)),
    "secret": ("app.ini", "[auth]\nclient_secret = 7hQ2mZ9xL4vB8nC1kJ6r\n", ("7hQ2mZ9xL4vB8nC1kJ6r",)),
}

NAMED_SECRETS = {
    "secrets.yaml": "db_password: plain-words-but-a-secret-file\n",
    ".kube/config": "apiVersion: v1\nkind: Config\nusers: [{name: a, user: {token: plain-kube-token}}]\n",
    "keys/laptop.ppk": "PuTTY-User-Key-File-2: ssh-rsa\nPrivate-Lines: 1\nplain-ppk-body\n",
    "ops/kubeconfig": "apiVersion: v1\nkind: Config\n# plain-kubeconfig-words\n",
}

KEPT = ("def get_token(self):", 'password = os.environ["DB_PASSWORD"]', 'TOKEN_URL = "https://example.com/token"',
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "Comment: me@laptop",
        "client-key-data:", "-----BEGIN RSA PRIVATE KEY-----", "kind: Config")

NOT_SECRET = ("class Client:\n    def get_token(self):\n        return self._token\n\n"
              'password = os.environ["DB_PASSWORD"]\nTOKEN_URL = "https://example.com/token"\n'
              'EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"\n')


def files() -> dict[str, str]:
    """Every planted file's full text (kinds sharing a file are joined), plus the harmless file."""
    out: dict[str, str] = {"client_code.py": NOT_SECRET}
    for path, text, _ in PLANTED.values():
        out[path] = out.get(path, "") + text
    return out
