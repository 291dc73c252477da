"""Moving an enrolled key out of the state directory for ``fedbus service install``: the
service gets it as a systemd credential (``agent.cli.units``), and the config is pointed at
the credential's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.atomic import PRIVATE, write_atomic
from agent.cli.units import HOME_DIRS, PRIVATE_STATE_ROOT, STATE_ROOT, Layout
from agent.errors import ConfigError
from agent.role import Role

if TYPE_CHECKING:
    import msgspec

    from agent.config import AgentConfig

S = TypeVar("S", bound="msgspec.Struct")


@dataclass(frozen=True, slots=True)
class KeyMove:
    """Moving an enrolled key into the config directory and pointing the config at it."""

    source: Path
    config: AgentConfig


def _canonical(path: Path) -> Path:
    """``/var/lib/private/fedbus/...`` (what ``resolve()`` gives once the service has run) as
    ``/var/lib/fedbus/...``, the path the service uses."""
    if path.is_relative_to(PRIVATE_STATE_ROOT):
        return STATE_ROOT / path.relative_to(PRIVATE_STATE_ROOT)
    return path


def _canonical_paths(struct: S, fields: tuple[str, ...]) -> S:
    """``struct`` with ``_canonical`` applied to ``fields`` (the same object when nothing
    changes, so that a default table stays out of the rewritten TOML)."""
    import msgspec

    changes = {}
    for name in fields:
        path = getattr(struct, name)
        if path is not None and _canonical(path) != path:
            changes[name] = _canonical(path)
    return msgspec.structs.replace(struct, **changes) if changes else struct


def plan_key_move(layout: Layout, config: AgentConfig) -> KeyMove | None:
    """Check that ``config`` can run in ``layout``'s sandbox; the key move it still needs
    (None: the config already reads the key from the credentials directory).

    Raises:
        ConfigError: another role or federation, a state directory other than the unit's,
            no identity, two different keys, or files the sandbox hides from the service.
    """
    import msgspec

    source = layout.config_path
    if config.role is not layout.role or config.federation != layout.federation:
        raise ConfigError(
            f"{source} configures a {config.role} of {config.federation!r}, not "
            f"{'a trainer' if layout.role is Role.TRAINER else 'an aggregator'} of "
            f"{layout.federation!r}"
        )
    config = _canonical_paths(config, ("state_dir",))
    config = msgspec.structs.replace(
        config,
        identity=_canonical_paths(
            config.identity, ("cert_file", "key_file", "ca_file", "ca_dir", "registry")
        ),
        tls=_canonical_paths(config.tls, ("ca_file", "cert_file", "key_file")),
    )
    if config.state_dir != layout.state_dir:
        raise ConfigError(
            f"{source}: state_dir is {config.state_dir}, but the service can write only "
            f"{layout.state_dir} (enroll with --state-dir {layout.state_dir})"
        )
    ident, tls = config.identity, config.tls
    if ident.key_file is None:
        raise ConfigError(
            f"{source} has no [identity]: the service runs enrolled agents only "
            "(fedbus enroll writes the identity)"
        )
    for dir_key in ("ca_dir", "registry"):
        path = getattr(ident, dir_key)
        if path is not None and not path.is_relative_to(layout.state_dir):
            raise ConfigError(
                f"{source}: [identity] {dir_key} {path} must be in {layout.state_dir}: the "
                "aggregator writes the registry and CRL there, and the sandbox lets it "
                "write nowhere else"
            )
    keys = {p for p in (ident.key_file, tls.key_file) if p is not None}
    readable = [ident.cert_file, ident.ca_file, tls.ca_file, tls.cert_file]
    for path in [p for p in readable if p is not None]:
        hidden = [d for d in (layout.config_dir, *HOME_DIRS) if path.is_relative_to(d)]
        if hidden:
            raise ConfigError(f"{source}: the service cannot read {path} (in {hidden[0]})")
    pending = keys - {layout.credential_key}
    if not pending:
        return None
    if len(pending) > 1:
        raise ConfigError(
            f"{source} names two private keys ({', '.join(map(str, sorted(pending)))}); "
            "the service takes one"
        )
    moved = layout.credential_key
    config = msgspec.structs.replace(
        config,
        identity=msgspec.structs.replace(ident, key_file=moved),
        tls=msgspec.structs.replace(tls, key_file=moved) if tls.key_file else tls,
    )
    return KeyMove(source=pending.pop(), config=config)


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, 0600 from the moment it exists, synced before the rename."""
    write_atomic(path, data, mode=PRIVATE)


def apply_key_move(layout: Layout, move: KeyMove) -> None:
    """Copy the key into the config directory, rewrite the config, then delete the key from
    the state directory (in that order: an interruption leaves a copy, never none)."""
    try:
        key = move.source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key {move.source}: {exc.strerror}") from exc
    _write_private(layout.key_path, key)
    _write_private(layout.config_path, move.config.to_toml())
    move.source.unlink()
