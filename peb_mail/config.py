"""Read ``config.toml`` once into frozen dataclasses.

Relative paths in the file are resolved against the folder that holds it, so the
service behaves the same from any working directory. Secrets are never stored in
the file: keys name environment variables instead.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
_LOCAL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class ServiceConfig:
    domain: str = "peb-mail.test"
    # Local part of the address students write commands to.
    address: str = "practice"
    display_name: str = "peb-mail"
    data_dir: Path = Path("var")
    database: Path = Path("var/peb-mail.sqlite3")
    scenarios_dir: Path = Path("scenarios")
    prompts_dir: Path = Path("prompts")
    # How long a stop (SIGTERM, Ctrl-C) may take before busy work is cancelled.
    stop_timeout_s: float = 20.0
    # How long a database write waits for another process's lock.
    busy_timeout_s: float = 10.0
    # Keys for reply tokens, used when $PEB_MAIL_SECRET is not set. Created
    # on first start with mode 600.
    secret_file: Path = Path("var/secret.key")
    # What proves a submission comes from the student: "token" (default),
    # "token+dmarc", "dkim" or "none". See peb_mail.trust.
    sender_policy: str = "token"
    # authserv-ids of your own MTA, trusted in Authentication-Results.
    trusted_authserv_ids: tuple[str, ...] = ()
    # A reply to feedback is graded as the next attempt, up to this many
    # attempts per student and scenario; 0 means no limit.
    max_attempts_per_scenario: int = 5
    # Mask the local part of email addresses in logs ("a***@example.com").
    redact_addresses: bool = False
    # "text" or "json" (one JSON object per line, for journald and collectors).
    log_format: str = "text"
    # Raw received messages older than this many days are deleted; 0 keeps them.
    retention_days: int = 0
    # serve processes sharing the SMTP port (SO_REUSEPORT). Each runs the
    # listener, intake of the mail it received, grading workers and a sender.
    processes: int = 1

    @property
    def service_address(self) -> str:
        return f"{self.address}@{self.domain}"


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_bytes: int = 10 * 1024 * 1024
    # Where `serve` writes the bound port, useful with port = 0.
    port_file: Path | None = None
    # "smtp", or "lmtp" when Postfix or Exim delivers to peb-mail.
    protocol: str = "smtp"
    max_recipients: int = 50
    max_sessions: int = 100
    # Calls of any one SMTP command in a session (aiosmtpd's command_call_limit).
    max_commands_per_session: int = 1000
    # A session that sends nothing for this long is closed.
    idle_timeout_s: float = 300.0
    # Messages per minute before 451 "try later"; 0 turns a limit off.
    messages_per_ip_per_minute: int = 0
    messages_per_sender_per_minute: int = 0
    # Peers the per-IP limit skips, such as a local MTA that relays to us.
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.1", "::1")
    # PEM files for STARTTLS; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_tls: bool = False


@dataclass(frozen=True)
class QueueConfig:
    workers: int = 2
    lease_s: float = 300.0
    max_tries: int = 5
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    poll_interval_s: float = 1.0


@dataclass(frozen=True)
class GraderConfig:
    kind: str = "offline"
    model: str = ""
    api_base: str = ""
    # Name of the environment variable that holds the provider key.
    api_key_env: str = "PEB_MAIL_LLM_API_KEY"
    timeout_s: float = 60.0
    max_output_tries: int = 3
    # Tried in order when the main model keeps failing.
    fallback_models: tuple[str, ...] = ()
    # Retries of one model on 429, 5xx and timeouts within one grading.
    max_provider_retries: int = 2
    provider_backoff_base_s: float = 2.0
    provider_backoff_max_s: float = 30.0
    # A longer Retry-After gives up on that model for this grading.
    max_retry_after_s: float = 60.0
    # Requests in flight to the provider from one process.
    concurrency: int = 4
    # Grading pauses (jobs stay queued) once the day's cost reaches this; 0 = no limit.
    daily_budget_usd: float = 0.0

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


@dataclass(frozen=True)
class OutboxConfig:
    # "maildir" stores sent mail locally; "smtp" delivers through a smarthost.
    transport: str = "maildir"
    maildir: Path = Path("var/sent")
    smarthost_host: str = ""
    smarthost_port: int = 25
    username: str = ""
    # Name of the environment variable that holds the smarthost password.
    password_env: str = "PEB_MAIL_SMTP_PASSWORD"
    starttls: bool = False
    use_tls: bool = False
    timeout_s: float = 30.0
    max_tries: int = 10
    backoff_base_s: float = 10.0
    backoff_max_s: float = 1800.0
    # Emails per minute this process hands to the smarthost; 0 = no limit.
    # Some providers accept only a few messages a minute.
    max_per_minute: int = 0
    # Emails delivered at the same time, each on its own SMTP connection.
    concurrency: int = 4
    # An email still failing this long after it was queued is marked dead.
    dead_after_s: float = 172800.0
    # DKIM signing of outbound mail: all three set, or none. The domain
    # defaults to service.domain when empty.
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: Path | None = None
    # A sender holds an email this long while delivering it; if it dies, the
    # email is tried again after the lease. Must exceed a whole SMTP delivery.
    send_lease_s: float = 300.0
    poll_interval_s: float = 1.0

    @property
    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None


@dataclass(frozen=True)
class InstructorsConfig:
    # "separate": one summary email per grade; "cc": instructors are copied on
    # the student's feedback; "none": no instructor mail.
    delivery: str = "separate"
    # UTC hour (0-23) at which each cohort's instructors get a daily digest;
    # -1 sends none.
    digest_hour_utc: int = -1


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    service: ServiceConfig = field(default_factory=ServiceConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    grader: GraderConfig = field(default_factory=GraderConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    instructors: InstructorsConfig = field(default_factory=InstructorsConfig)
    # Cohort name -> instructor addresses.
    cohorts: dict[str, tuple[str, ...]] = field(default_factory=dict)


_SECTIONS: dict[str, type] = {
    "service": ServiceConfig,
    "listener": ListenerConfig,
    "queue": QueueConfig,
    "grader": GraderConfig,
    "outbox": OutboxConfig,
    "instructors": InstructorsConfig,
}


def load_config(path: Path | str | None = None) -> Config:
    """Load and validate a config file.

    With no path, ``$PEB_MAIL_CONFIG`` or ``./config.toml`` is used. Raises
    ConfigError naming the file, the key and the fix.
    """
    if path is None:
        path = os.environ.get("PEB_MAIL_CONFIG") or DEFAULT_CONFIG_NAME
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} not found: pass --config PATH with an "
            "existing file, or copy config.toml from the peb-mail source folder"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return config_from_dict(data, base_dir=path.resolve().parent, path=path)


def config_from_dict(
    data: dict[str, Any], *, base_dir: Path, path: Path | None = None
) -> Config:
    """Build a Config from parsed TOML, resolving paths against ``base_dir``."""
    where = str(path) if path else "config"
    unknown = set(data) - set(_SECTIONS) - {"cohorts"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{sorted(unknown)[0]}]; expected one of "
            f"{', '.join(sorted([*_SECTIONS, 'cohorts']))}"
        )
    sections = {
        name: _build_section(where, name, cls, data.get(name, {}), base_dir)
        for name, cls in _SECTIONS.items()
    }
    config = Config(
        path=path, cohorts=_read_cohorts(where, data.get("cohorts", {})), **sections
    )
    _validate(where, config)
    return config


def _build_section(where: str, name: str, cls: type, raw: Any, base_dir: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {name}.{key}; expected one of "
                f"{', '.join(sorted(known))}"
            )
        default = getattr(cls(), key)
        values[key] = _coerce(where, f"{name}.{key}", value, default, base_dir)
    return cls(**values)


def _coerce(where: str, key: str, value: Any, default: Any, base_dir: Path) -> Any:
    if isinstance(default, Path) or (default is None and key.endswith("_file")):
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{where}: {key} must be a non-empty path string, got {value!r}"
            )
        return (base_dir / value).resolve()
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise ConfigError(
                f'{where}: {key} must be a list of strings such as ["a", "b"], '
                f"got {value!r}"
            )
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _read_cohorts(where: str, raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: [cohorts] must be a table of [cohorts.NAME] tables"
        )
    cohorts: dict[str, tuple[str, ...]] = {}
    for name, table in raw.items():
        instructors = table.get("instructors") if isinstance(table, dict) else None
        if not isinstance(instructors, list) or not all(
            isinstance(item, str) and "@" in item for item in instructors
        ):
            raise ConfigError(
                f"{where}: cohorts.{name}.instructors must be a list of email "
                f'addresses, such as ["teacher@example.edu"]'
            )
        cohorts[name] = tuple(item.strip().lower() for item in instructors)
    return cohorts


def _validate(where: str, config: Config) -> None:
    checks = [
        (
            _DOMAIN_RE.match(config.service.domain) is not None,
            f"service.domain must be a lowercase domain name such as "
            f'"mail.example.edu", got {config.service.domain!r}',
        ),
        (
            _LOCAL_RE.match(config.service.address) is not None
            and "+" not in config.service.address,
            f"service.address must be a lowercase local part without '+', got "
            f"{config.service.address!r}",
        ),
        (
            config.service.sender_policy in ("none", "token", "token+dmarc", "dkim"),
            f'service.sender_policy must be "none", "token", "token+dmarc" or "dkim", '
            f"got {config.service.sender_policy!r}",
        ),
        (
            config.service.sender_policy != "token+dmarc"
            or bool(config.service.trusted_authserv_ids),
            'service.trusted_authserv_ids must name your MTA when sender_policy is "token+dmarc"',
        ),
        (
            config.listener.protocol in ("smtp", "lmtp"),
            f'listener.protocol must be "smtp" or "lmtp", got {config.listener.protocol!r}',
        ),
        (
            1 <= config.outbox.concurrency <= 100,
            f"outbox.concurrency must be between 1 and 100, "
            f"got {config.outbox.concurrency}",
        ),
        (
            1 <= config.service.processes <= 64,
            f"service.processes must be between 1 and 64 (about one per core), "
            f"got {config.service.processes}",
        ),
        (
            config.service.log_format in ("text", "json"),
            f'service.log_format must be "text" or "json", got {config.service.log_format!r}',
        ),
        (
            config.grader.kind in ("offline", "llm"),
            f'grader.kind must be "offline" or "llm", got {config.grader.kind!r}',
        ),
        (
            config.grader.kind != "llm" or bool(config.grader.model),
            'grader.model must name a litellm model (such as "openai/gpt-4o-mini") '
            'when grader.kind is "llm"',
        ),
        (
            config.grader.concurrency >= 1,
            f"grader.concurrency must be at least 1, got {config.grader.concurrency}",
        ),
        (
            config.grader.max_provider_retries >= 0,
            f"grader.max_provider_retries must be 0 or more, got "
            f"{config.grader.max_provider_retries}",
        ),
        (
            config.grader.daily_budget_usd >= 0,
            f"grader.daily_budget_usd must be 0 (no limit) or more, got "
            f"{config.grader.daily_budget_usd}",
        ),
        (
            config.grader.timeout_s > 0,
            f"grader.timeout_s must be positive, got {config.grader.timeout_s}",
        ),
        (
            bool(config.outbox.dkim_selector)
            == (config.outbox.dkim_key_file is not None),
            "outbox.dkim_selector and outbox.dkim_key_file must be set together",
        ),
        (
            config.outbox.send_lease_s > config.outbox.timeout_s,
            f"outbox.send_lease_s ({config.outbox.send_lease_s}) must be longer than "
            f"outbox.timeout_s ({config.outbox.timeout_s})",
        ),
        (
            config.outbox.transport in ("maildir", "smtp"),
            f'outbox.transport must be "maildir" or "smtp", got '
            f"{config.outbox.transport!r}",
        ),
        (
            config.outbox.transport != "smtp" or bool(config.outbox.smarthost_host),
            'outbox.smarthost_host must be set when outbox.transport is "smtp"',
        ),
        (
            -1 <= config.instructors.digest_hour_utc <= 23,
            f"instructors.digest_hour_utc must be -1 (off) or 0-23, got "
            f"{config.instructors.digest_hour_utc}",
        ),
        (
            config.instructors.delivery in ("separate", "cc", "none"),
            f'instructors.delivery must be "separate", "cc" or "none", got '
            f"{config.instructors.delivery!r}",
        ),
        (
            (config.listener.tls_cert_file is None)
            == (config.listener.tls_key_file is None),
            "listener.tls_cert_file and listener.tls_key_file must be set together",
        ),
        (
            not config.listener.require_tls
            or config.listener.tls_cert_file is not None,
            "listener.require_tls needs listener.tls_cert_file and tls_key_file",
        ),
        (
            config.listener.max_recipients >= 1 and config.listener.max_sessions >= 1,
            "listener.max_recipients and listener.max_sessions must be at least 1",
        ),
        (
            0 <= config.listener.port <= 65535,
            f"listener.port must be 0-65535, got {config.listener.port}",
        ),
        (
            config.listener.max_message_bytes >= 1024,
            f"listener.max_message_bytes must be at least 1024, got "
            f"{config.listener.max_message_bytes}",
        ),
        (
            config.queue.workers >= 1,
            f"queue.workers must be at least 1, got {config.queue.workers}",
        ),
        (
            config.queue.max_tries >= 1,
            f"queue.max_tries must be at least 1, got {config.queue.max_tries}",
        ),
        (
            config.queue.lease_s > 0,
            f"queue.lease_s must be positive, got {config.queue.lease_s}",
        ),
        (
            config.outbox.max_tries >= 1,
            f"outbox.max_tries must be at least 1, got {config.outbox.max_tries}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
