"""The configuration: one YAML file validated against a schema (unknown keys are errors).

Loading never raises a traceback at the user: every problem becomes a ConfigError whose
message names the file, the line and the key ("configs/x.yaml:12: sinks[1].url: ..."). The
CLI turns that into exit code 78 (EX_CONFIG). Environment variables override single keys:
NETAD_MODEL__DEVICE=cpu sets model.device, NETAD_HOME_NET=10.0.0.0/8,fd00::/8 the top-level
home_net (values are parsed as YAML); a NETAD_ variable that names no key is refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from detector.contracts import ENTITY_GLOBAL, ENTITY_HOST
from detector.errors import ConfigError

ENV_PREFIX = "NETAD_"


class _Strict(BaseModel):
    # every number finite (`.inf`, `.nan` are errors) and, below, bounded: a value no deployment
    # needs (1e300 s) would otherwise overflow later, in a timer, a ns conversion or a tensor
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_DAY_S = 86_400.0
_MAX_INTERVAL_S = 30 * _DAY_S  # a schedule, an idle expiry or a lateness beyond a month is a typo
_MAX_COUNT = 100_000_000  # counts of windows, entities, flows: well past what one process can hold


class SensorConfig(_Strict):
    id: str = "netad"  # observer name in every incident
    hostname: str | None = None  # defaults to the machine's hostname


def _check_networks(value: list[str]) -> list[str]:
    for i, net in enumerate(value):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"[{i}] {net!r} is not a network: {exc}") from None
    return value


_RESERVED_CLASSES = frozenset({ENTITY_GLOBAL, ENTITY_HOST})


def check_groups(groups: Mapping[str, Sequence[str]]) -> None:
    """Raise ValueError where `groups` cannot be host groups: a reserved or odd name, a
    network that does not parse, or a network in two groups (which one would a host be in?)."""
    seen: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for name, nets in groups.items():
        if name in _RESERVED_CLASSES or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
            raise ValueError(f"{name!r}: a group's name is a letter, then letters, digits, '-' or '_', and not "
                             f"{' or '.join(sorted(_RESERVED_CLASSES))}")
        if not nets:
            raise ValueError(f"{name}: no networks")
        for i, text in enumerate(nets):
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                raise ValueError(f"{name}[{i}]: {text!r} is not a network: {exc}") from None
            other = next((o for o, n in seen if n.version == net.version and n.overlaps(net) and o != name), None)
            if other is not None:
                raise ValueError(f"{name}[{i}]: {text} overlaps a network of group {other!r}: a host is in one group")
            seen.append((name, net))


def home_net_change(trained: list[str] | tuple[str, ...] | None, home_net: list[str], ours: str = "this config has") -> str | None:
    """Why a model trained with home_net `trained` cannot read windows built with `home_net`;
    None where they name the same networks (in any order or spelling) or the model did not
    record its own (a bundle older than the record). Windows are built by which addresses
    home_net holds: which hosts are entities, what the link sends and receives, which peers
    are new to the network. The 1 h demo's link, read by a model trained with another
    home_net, alarmed in 59 of its 60 windows (none with its own). `ours` names whose
    home_net it is ("the daemon runs", on a reload)."""
    if trained is None:
        return None

    def networks(value: list[str] | tuple[str, ...]) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
        try:
            return {ipaddress.ip_network(net, strict=False) for net in value}
        except (TypeError, ValueError):
            return None

    if networks(trained) == networks(home_net):
        return None
    return (f"the model was trained with home_net {', '.join(map(str, trained)) or '[] (none)'} and {ours} "
            f"{', '.join(home_net) or '[] (none)'}: a window counts traffic in and out of home_net, so the model would read every "
            "window against other networks than it learned; retrain with this config, or set home_net back")


CREDENTIAL = "credential:"  # a value `credential:NAME` is the file NAME of systemd's $CREDENTIALS_DIRECTORY
_CREDENTIAL_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def resolve_credential(value: str) -> str:
    """`credential:NAME` -> the content of $CREDENTIALS_DIRECTORY/NAME (a unit's LoadCredential=),
    without its final newline; any other value as it is. Secrets (a sink URL with its token,
    Kafka's SASL password) then need not be in a config file the dynamic user must read."""
    if not value.startswith(CREDENTIAL):
        return value
    name = value[len(CREDENTIAL):]
    if not name or name in (".", "..") or not set(name) <= _CREDENTIAL_NAME:
        raise ValueError(f"{value!r}: a credential name is letters, digits, '_', '.' and '-'")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(f"{value!r}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with "
                         f"LoadCredential={name}:/path/to/secret)")
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{value!r}: cannot read credential {name} in {directory}: "
                         f"{getattr(exc, 'strerror', None) or exc} (is LoadCredential={name}:... in the unit?)") from None


FLOW_RECORD_SOURCES = ("netflow", "zeek")  # source types that give flow records, not packets


class SourceConfig(_Strict):
    # pcap: replay a capture file; interface: live capture; netflow: a NetFlow v5/v9/IPFIX
    # collector on UDP; zeek: a Zeek conn.log (TSV or JSON), followed while it grows if `follow`
    type: Literal["pcap", "interface", "netflow", "zeek"] = "pcap"
    path: Path | None = None  # pcap/pcapng file (type=pcap) or conn.log (type=zeek)
    speed: float = Field(0.0, ge=0.0, le=1e6)  # replay speed: 0 = as fast as possible, 1 = real time
    interface: str | None = None  # for type=interface
    snaplen: int = Field(262144, ge=64, le=262144)
    buffer_mb: int = Field(64, ge=1, le=65536)  # kernel ring (interface) or UDP receive buffer (netflow)
    promisc: bool = True
    bpf: str = ""
    batch_packets: int = Field(65536, ge=1, le=16_777_216)  # packets (or flow records) per batch
    # capture workers (pcap, interface): the flow table and per-bin accumulators split by
    # flow over this many processes, merged per window (capture.windows.sharded)
    workers: int = Field(1, ge=1, le=64)
    bind_address: str = "0.0.0.0"  # netflow: the address to listen on ("::" for IPv6 and IPv4)
    port: int = Field(2055, ge=0, le=65535)  # netflow: UDP port; 0 = any free one (logged)
    allowed_exporters: list[str] = Field(default_factory=list)  # netflow: exporter networks; [] = any
    default_sampling_rate: int = Field(1, ge=1, le=2**32 - 1)  # netflow: for exporters that never announce theirs
    follow: bool = False  # zeek: keep reading what Zeek appends (and follow rotations)
    from_end: bool = False  # zeek, with follow: skip what the log already holds at the first start (a restart reads on from its checkpoint)
    # Time is an input (capture.clock): a live source's records may end at most max_ahead_s
    # past the wall clock; any source's may fall at most max_jump_s behind the newest record
    # believed, and (replays) jump at most that far ahead of it unless 8 records agree on
    # the new time. Records outside are counted, reported and dropped, never move the clock.
    max_ahead_s: float = Field(300.0, gt=0, le=_DAY_S)
    max_jump_s: float = Field(3600.0, gt=0, le=_MAX_INTERVAL_S)

    @field_validator("bind_address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("allowed_exporters")
    @classmethod
    def _exporters(cls, value: list[str]) -> list[str]:
        return _check_networks(value)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("type") in FLOW_RECORD_SOURCES:
            raise ValueError(f"capture workers split packets by flow; a {info.data.get('type')} source gives flow "
                             "records (use 1)")
        return value

    @field_validator("from_end")
    @classmethod
    def _from_end(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("follow"):
            raise ValueError("needs follow: true (a log that is not followed is read from its start)")
        return value

    @property
    def flow_records(self) -> bool:
        """True when this source gives flow records (FLOW_SCHEMA), not packets."""
        return self.type in FLOW_RECORD_SOURCES


class FlowsConfig(_Strict):
    tcp_idle_timeout_s: float = Field(300.0, gt=0, le=_MAX_INTERVAL_S)
    udp_idle_timeout_s: float = Field(60.0, gt=0, le=_MAX_INTERVAL_S)
    other_idle_timeout_s: float = Field(30.0, gt=0, le=_MAX_INTERVAL_S)
    active_timeout_s: float = Field(1800.0, gt=0, le=_MAX_INTERVAL_S)
    max_flows: int = Field(1_000_000, ge=16, le=_MAX_COUNT)


class WindowsConfig(_Strict):
    bin_s: float = Field(10.0, gt=0, le=_DAY_S)
    bins: int = Field(6, ge=1, le=256)
    lateness_s: float = Field(2.0, ge=0, le=_DAY_S)
    # flow records (netflow, zeek) come when a flow ends or hits the exporter's active
    # timeout: set this to active timeout + idle timeout + export interval (NetFlow), or to
    # Zeek's longest inactivity timeout (TCP: 300 s) plus a margin
    flow_lateness_s: float = Field(90.0, ge=0, le=_DAY_S)
    max_entities: int = Field(50_000, ge=1, le=_MAX_COUNT)
    entity_idle_s: float = Field(3600.0, gt=0, le=_MAX_INTERVAL_S)
    # each entity's memory of its peers and ports (the novelty features): forgotten after
    # history_s without contact; nothing counts as new before an entity's history is
    # history_warmup_s old (at start-up every peer would be)
    history_s: float = Field(21600.0, gt=0, le=_MAX_INTERVAL_S)
    history_warmup_s: float = Field(3600.0, ge=0, le=_MAX_INTERVAL_S)


class ModelConfig(_Strict):
    path: Path = Path("var/model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast on CUDA only
    adapt_thresholds: bool = False  # refit thresholds on recent non-alerted windows (bounded)
    warmup_windows: int = Field(1, ge=0, le=_MAX_COUNT)
    threads: int = Field(1, ge=0, le=1024)  # torch intra-op threads; 0 = torch's default


class TrainingConfig(_Strict):
    hidden_size: int = Field(32, ge=2, le=1024)
    # networks per entity class, each from its own seed and calibrated on its own; a window
    # scores their median in their own thresholds (model.bundle.ClassModel, docs/EVALUATION.md xxx)
    members: int = Field(3, ge=1, le=16)
    epochs: int = Field(30, ge=1, le=100_000)
    learning_rate: float = Field(3e-3, gt=0, le=10.0)
    batch_streams: int = Field(256, ge=1, le=_MAX_COUNT)
    seed: int = Field(7, ge=0, le=2**32 - 1)  # numpy's seed range
    validation_fraction: float = Field(0.2, gt=0, lt=0.9)
    trim_fraction: float = Field(0.02, ge=0, lt=0.5)
    threshold_quantile: float = Field(0.999, gt=0.5, lt=1.0)
    target_false_alarm: float = Field(1e-4, gt=0, lt=0.5)
    # home hosts modelled apart, each group an entity class with its own networks and
    # thresholds (model.groups): name -> networks inside home_net, like Suricata's $HTTP_SERVERS
    host_groups: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("host_groups")
    @classmethod
    def _host_groups(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        check_groups(value)
        return value


class IncidentsConfig(_Strict):
    rules: list[Path] = Field(default_factory=lambda: [Path("rules/default.yaml")])
    min_windows: int = Field(1, ge=1, le=_MAX_COUNT)
    resolve_after_windows: int = Field(2, ge=1, le=_MAX_COUNT)
    update_every_windows: int = Field(10, ge=1, le=_MAX_COUNT)  # an `updated` event at most this often, unless severity or peak rises


class SinkConfig(_Strict):
    url: str  # or credential:NAME (resolve_credential)
    name: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return resolve_credential(value)


class OutputsConfig(_Strict):
    scores: Path | None = None  # window-score JSON lines, one per entity per window
    summary: bool = True  # print a short summary when a replay ends


class IncidentPageConfig(_Strict):
    """The incident page (/incidents beside /metrics) and the history it and `netad explain` read (service.explain)."""

    enabled: bool = False  # serve /incidents on metrics_address: to loopback clients, to others with the token
    token_file: Path | None = None  # holds the bearer token a client from another address must send
    history_s: float = Field(21600.0, gt=0, le=_MAX_INTERVAL_S)  # each entity's window scores kept this long ...
    history_mb: float = Field(128.0, ge=0, le=1_048_576)  # ... in at most this much memory (oldest first); 0 = none


class ServiceConfig(_Strict):
    """The daemon's own schedule and endpoints (service layer)."""

    checkpoint_interval_s: float = Field(60.0, gt=0, le=_MAX_INTERVAL_S)  # hidden states and open incidents to state_dir
    heartbeat_interval_s: float = Field(300.0, gt=0, le=_MAX_INTERVAL_S)  # a `heartbeat` log line with the counters
    threshold_refresh_interval_s: float = Field(3600.0, gt=0, le=_MAX_INTERVAL_S)
    retrain_interval_s: float = Field(0.0, ge=0, le=_MAX_INTERVAL_S)  # 0 = never retrain on recent benign windows
    retrain_buffer_windows: int = Field(1440, ge=2, le=_MAX_COUNT)  # recent non-alerted windows kept for retraining
    retrain_buffer_mb: float = Field(256.0, gt=0, le=1_048_576)  # ... and at most this much memory for them
    retrain_min_windows: int = Field(60, ge=2, le=_MAX_COUNT)  # fewer buffered windows than this: the retrain is skipped
    metrics_address: str | None = None  # e.g. 127.0.0.1:9108 serves /metrics, /healthz, /readyz
    stall_after_s: float = Field(60.0, gt=0, le=_DAY_S)  # no progress this long: /healthz fails, no WATCHDOG
    status_interval_s: float = Field(5.0, gt=0, le=_DAY_S)  # systemd STATUS= line (packets/s, entities, incidents)
    shutdown_timeout_s: float = Field(20.0, gt=0, le=_DAY_S)  # drain deadline on SIGTERM
    incident_page: IncidentPageConfig = Field(default_factory=IncidentPageConfig)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class KafkaConfig(_Strict):
    """Scale-out over Kafka (service/kafka/): used by the `sensor` and `scorer` roles."""

    bootstrap_servers: str = "localhost:9092"
    # both topics are created by the operator (README: scaling out) with the same partition
    # count, so an entity's state lives in the partition number its windows do
    windows_topic: str = "netad.windows"  # entity windows, keyed by sensor/entity
    state_topic: str = "netad.state"  # cleanup.policy=compact: hidden state and open incident per entity
    group_id: str = "netad-scorers"
    # most entity windows a scorer takes per cycle: each cycle saves the state of every entity
    # it scored once, however many of its windows it held, then commits
    batch_windows: int = Field(20_000, ge=1, le=_MAX_COUNT)
    # librdkafka settings for every client: security.protocol, sasl.*, ssl.*, session.timeout.ms...
    # (a secret as credential:NAME: `sasl.password: credential:kafka-password`)
    client: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("client")
    @classmethod
    def _client(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        return {k: resolve_credential(v) if isinstance(v, str) else v for k, v in value.items()}


class Config(_Strict):
    # all-in-one: capture and scoring in this process; sensor: capture -> windows -> Kafka;
    # scorer: Kafka -> scores -> incidents (a member of kafka.group_id)
    role: Literal["all-in-one", "sensor", "scorer"] = "all-in-one"
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    # like Suricata's HOME_NET: the private ranges (RFC 1918 and IPv6 unique local), so a first run sees hosts
    home_net: list[str] = Field(default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])
    source: SourceConfig = Field(default_factory=SourceConfig)
    flows: FlowsConfig = Field(default_factory=FlowsConfig)
    windows: WindowsConfig = Field(default_factory=WindowsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)
    sinks: list[SinkConfig] = Field(default_factory=lambda: [SinkConfig(url="stdout://")])
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    state_dir: Path = Path("var/state")
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("home_net")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)

    @field_validator("training")
    @classmethod
    def _groups_at_home(cls, value: TrainingConfig, info: ValidationInfo) -> TrainingConfig:
        """A host group's networks lie inside home_net: only there are hosts entities."""
        home_net = info.data.get("home_net", [])
        home = [ipaddress.ip_network(n, strict=False) for n in home_net]
        for name, nets in value.host_groups.items():
            for i, text in enumerate(nets):
                net = ipaddress.ip_network(text, strict=False)
                if not any(net.version == h.version and net.subnet_of(h) for h in home):  # type: ignore[arg-type]
                    raise ValueError(f"training.host_groups.{name}[{i}]: {text} is not inside home_net "
                                     f"({', '.join(home_net) or 'none'}): its addresses are no hosts of their own")
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        try:
            a_file = value.exists() and not value.is_dir()
        except OSError:  # not ours to look at: taking the directory at start-up says why (exit 78)
            return value
        if a_file:
            raise ValueError(f"{str(value)!r} exists and is not a directory")
        return value

    @property
    def entity_classes(self) -> tuple[str, ...]:
        """The entity classes this config scores, each needing its model in the bundle: the
        link (always) and, with home networks, their hosts."""
        return (ENTITY_GLOBAL, ENTITY_HOST) if self.home_net else (ENTITY_GLOBAL,)


# --------------------------------------------------------------------------------------


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError."""
    env = dict(os.environ) if env is None else env
    overrides = env_overrides(env)
    if path is None:
        return validate_yaml_data(Config, _apply_env({}, overrides), None, "<defaults>", overrides)
    data, root = read_yaml(path)
    return validate_yaml_data(Config, _apply_env(data, overrides), root, str(path), overrides)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a key given twice in one mapping is an error: PyYAML
    would keep the last one, and the operator would not know which of the two is in force.
    Keys a merge (`<<: *base`) brings in may still be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first.start_mark.line + 1})", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only


def read_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """A YAML mapping and its node tree (for line numbers). Raises ConfigError, also for a
    key given twice in one mapping."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # not UTF-8
        raise ConfigError(f"{label}: cannot read: {exc}") from None
    try:
        root = yaml.compose(text)
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{label}{line}: invalid YAML: {reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}:1: the top level must be a mapping")
    return data, root


M = TypeVar("M", bound=BaseModel)


def validate_yaml_data(model: type[M], data: dict[str, Any], root: yaml.Node | None, label: str,
                       overrides: Overrides | None = None) -> M:
    """Validate against a pydantic model; errors name file:line and the key path, or the
    environment variable (`overrides`) that set the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{_where(label, root, loc, overrides or {})}: {msg}")
        raise ConfigError("\n".join(lines)) from None


@dataclass(frozen=True)
class _Override:
    variable: str  # NETAD_SECTION__KEY
    kind: str  # what the key holds (_key_kind)
    raw: str  # the variable's value


Overrides = dict[tuple[str, ...], _Override]  # the config keys the environment sets, by key path


def env_overrides(env: Mapping[str, str]) -> Overrides:
    """NETAD_KEY (top-level keys: NETAD_HOME_NET, NETAD_STATE_DIR) and NETAD_SECTION__KEY:
    the keys they override. A NETAD_ variable that names no config key is a ConfigError, not
    silently ignored (a typo must not leave the file's value in force). NETAD_TEST_* is left
    to the test suite."""
    out: Overrides = {}
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key.startswith(ENV_PREFIX + "TEST_"):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        kind = _key_kind(path)
        if kind is None:
            raise ConfigError(f"environment: {key}: no config key {'.'.join(path)} (NETAD_KEY or NETAD_SECTION__KEY)")
        out[tuple(path)] = _Override(key, kind, raw)
    return out


def _where(label: str, root: yaml.Node | None, loc: tuple[Any, ...], overrides: Overrides) -> str:
    """Where key `loc` was set: `environment: NETAD_X: key` when a variable set it (or a key
    above it), else `file:line: key` (`file: key` where the file has no line for it). An
    error about a key whose value a variable set below it (a section's own check) names the
    file's line and the variables."""
    key = _format_loc(loc)
    for path, override in overrides.items():
        if tuple(loc[: len(path)]) == path:
            return f"environment: {override.variable}: {key}"
    line = _line_of(root, loc)
    where = f"{label}:{line}: {key}" if line else f"{label}: {key}"
    below = [o.variable for path, o in overrides.items() if tuple(path[: len(loc)]) == tuple(loc)]
    return f"{where} (with {', '.join(below)} from the environment)" if below else where


def _apply_env(data: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Each override in `data` (the file's): values are YAML (`NETAD_HOME_NET='[10.0.0.0/8,
    fd00::/8]'`; a list key also takes a comma-separated string)."""
    for path, override in overrides.items():
        try:
            value = _load_yaml(override.raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment: {override.variable}: invalid YAML value: {exc}") from None
        if override.kind == "list" and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def _key_kind(path: list[str]) -> str | None:
    """What a key path of Config holds ("model", "list", "map", "value"); None if no such key.
    Any subkey of a free-form mapping (kafka.client) is a key."""
    model: type[BaseModel] | None = Config
    kind = "model"
    for part in path:
        if kind == "map":
            return "value"
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, kind = annotation, "model"
        elif origin is list:
            model, kind = None, "list"
        elif origin is dict:
            model, kind = None, "map"
        else:
            model, kind = None, "value"
    return kind


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node the error location reaches."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def key_location(path: str | Path | None, loc: tuple[Any, ...], env: Mapping[str, str] | None = None) -> str:
    """`file:line: key` of a key of a config file, for messages about a valid config's values
    (check-config: a model or capture that is not there); the line of the nearest enclosing
    key the file has, or just `file: key` for a value left to its default; `environment:
    NETAD_X: key` for a key the environment (os.environ unless `env`) set, as load_config
    reads it."""
    label = str(path) if path is not None else "<defaults>"
    try:
        overrides = env_overrides(os.environ if env is None else env)
    except ConfigError:  # load_config refused the environment before any value was checked
        overrides = {}
    if any(tuple(loc[: len(p)]) == p for p in overrides):
        return _where(label, None, loc, overrides)
    root = None
    if path is not None:
        try:
            root = yaml.compose(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            root = None
    present = isinstance(root, yaml.MappingNode) and any(getattr(k, "value", None) == loc[0] for k, _ in root.value)
    line = _line_of(root, loc) if present else None
    return f"{label}:{line}: {_format_loc(loc)}" if line else f"{label}: {_format_loc(loc)}"
