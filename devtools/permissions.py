"""Each service's NATS user as an operator sets it up: `nsc` commands (production, operator/JWT
mode) or an `authorization` block for a plain nats-server config (tests, small setups)."""

from __future__ import annotations

import json
import shlex

from shared.protocol.permissions import USERS


def nsc_commands(account: str) -> list[str]:
    """`nsc add user` commands giving every service user exactly its grants."""
    commands = []
    for name, grants in USERS.items():
        command = ["nsc", "add", "user", "--account", account, "--name", name, "--allow-pub-response"]
        for subject in grants.publish:
            command += ["--allow-pub", subject]
        for subject in grants.subscribe:
            command += ["--allow-sub", subject]
        commands.append(shlex.join(command))
    return commands


def server_config(password_env: str) -> str:
    """An `authorization` block with one user per service; each password comes from the environment
    of the nats-server (`$<password_env><USER>`, the user name upper-cased with `_` for `-`)."""
    users = [
        "    {"
        f" user: {json.dumps(name)},"
        f" password: ${password_env}{name.upper().replace('-', '_')},"
        f" permissions: {{ publish: {{ allow: {json.dumps(list(grants.publish))} }},"
        f" subscribe: {{ allow: {json.dumps(list(grants.subscribe))} }}, allow_responses: true }}"
        " }"
        for name, grants in USERS.items()
    ]
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}"
