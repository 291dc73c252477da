"""Agent configuration: one TOML file, decoded into typed, validated structs.

Example (trainer)::

    role = "trainer"
    agent_id = "agent-1"
    federation = "demo"
    bus_url = "nats://127.0.0.1:4222"
    state_dir = "/var/lib/fedbus/demo"

    [plugin]
    name = "digits-mlp"
    options = { agent_index = 0, num_agents = 10 }

An aggregator has ``role = "aggregator"`` and an ``[aggregator]`` table (``AggregatorConfig``).
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import msgspec

from agent.async_settings import AsyncConfig
from agent.errors import ConfigError
from agent.identity_settings import IdentityConfig as IdentityConfig
from agent.identity_settings import TlsConfig as TlsConfig
from agent.messages.bodies import NAME_PATTERN, Scalar
from agent.messages.chunks import ENVELOPE_MARGIN
from agent.messages.transfer import TransferConfig
from agent.p2p_settings import P2PConfig as P2PConfig
from agent.p2p_settings import SimulateConfig as SimulateConfig
from agent.privacy.config import PrivacyConfig, PrivacyMode
from agent.robust.settings import RobustConfig
from agent.role import RUNTIME_ROLES, Role
from agent.secagg_settings import SecAggConfig as SecAggConfig
from agent.secagg_settings import SecureAggregation as SecureAggregation
from agent.settings_types import AtLeastOne, Fraction, Positive, Table

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
_Config = Table


class PluginConfig(_Config, frozen=True):
    """``[plugin]``: which plugin (entry-point name in ``fedbus.plugins``) and its options."""

    name: Name
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class StrategyName(StrEnum):
    """The server-side update rule (``agent.strategy``)."""

    FEDAVG = "fedavg"  # McMahan et al. 2017
    FEDAVGM = "fedavgm"  # Hsu et al. 2019, server momentum
    FEDADAGRAD = "fedadagrad"  # Reddi et al. 2021, Algorithm 2
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDPROX = "fedprox"  # Li et al. 2020: FedAvg on the server, proximal_mu in fit config


Decay = Annotated[float, msgspec.Meta(ge=0, lt=1)]


class StrategyConfig(_Config, frozen=True):
    """``[aggregator.strategy]``: how the round's mean delta Δ moves the model (the same with
    SecAgg+ on and off).

    Attributes:
        name: the rule (``StrategyName``).
        server_lr: η; 0 means the rule's default (1.0 for fedavg/fedprox, 0.1 for fedavgm,
            0.03 for the adaptive ones, about 10^-1.5, where Reddi et al. 2021 often found
            the best server rate).
        momentum: FedAvgM's β (Hsu et al. 2019, §3).
        beta1, beta2: Algorithm 2's decays (Reddi et al. 2021: 0.9 and 0.99).
        tau: Algorithm 2's adaptivity τ (and v_{-1} = τ²).
        proximal_mu: FedProx's μ (Li et al. 2020, Eq. 2), sent to every ``fit`` as
            ``proximal_mu`` when ``name = "fedprox"``.
    """

    name: StrategyName = StrategyName.FEDAVG
    server_lr: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    momentum: Decay = 0.9
    beta1: Decay = 0.9
    beta2: Decay = 0.99
    tau: Positive = 1e-3
    proximal_mu: Annotated[float, msgspec.Meta(ge=0)] = 0.01

    def fit_config(self) -> dict[str, Scalar]:
        """What the strategy adds to every ``fit``'s config: ``proximal_mu`` for FedProx."""
        if self.name is StrategyName.FEDPROX:
            return {"proximal_mu": self.proximal_mu}
        return {}


class AfterRun(StrEnum):
    """What a long-lived aggregator does when a run ends (``[aggregator] after_run``)."""

    EXIT = "exit"  #: the process exits (its status says how the run went)
    SERVE = "serve"  #: stay up serving enrollment, status and revocation, training nothing
    NEXT = "next"  #: start the next run (from this one's model when ``continue_from = "last"``)


class TrainingMode(StrEnum):
    """How the federation trains (``[aggregator] mode``).

    ``sync``: synchronous rounds (a cohort, a deadline, one aggregate per round).
    ``async``: buffered asynchronous aggregation (FedBuff, Nguyen et al., AISTATS 2022).
    ``p2p``: serverless gossip averaging between neighbours (Lian et al., NeurIPS 2017).
    """

    SYNC = "sync"
    ASYNC = "async"
    P2P = "p2p"


class AggregatorConfig(_Config, frozen=True):
    """``[aggregator]``: the round schedule.

    Attributes:
        mode: synchronous rounds, buffered asynchronous or P2P (``TrainingMode``).
        async_: ``[aggregator.async]``, the buffered asynchronous settings (``mode = "async"``;
            there a "round" is one model version).
        rounds: number of training rounds (0: train until stopped).
        continue_from: a new run starts from the plugin's initial model (``""``), from the
            newest finished run's final model (``"last"``), or from run ``run-NNNN``'s.
        after_run: what the process does when a run ends (``AfterRun``).
        fraction_fit: fraction of admitted agents sampled into each round's cohort.
        min_fit_clients, max_fit_clients: bounds on the cohort size.
        min_available_clients: admitted agents needed before round 1 starts.
        join_timeout: seconds to wait for ``min_available_clients`` (then the rounds start
            if at least ``min_fit_clients`` are admitted, else the run fails).
        round_timeout: seconds a round waits for updates before aggregating the survivors.
        eval_every: federated evaluation every k rounds (0: only after the last round).
        eval_timeout: seconds to wait for evaluation results.
        seed: seed of the cohort sampler.
        fit_config: scalars sent to every ``fit`` (``epochs``, ``lr``, ...).
        eval_config: scalars sent with every ``evaluate``.
        secure_aggregation: ``"secagg+"`` (the aggregator learns only the cohort's sum) or
            ``"none"``.
        secagg: the SecAgg+ settings.
        strategy: the server-side update rule (``[aggregator.strategy]``).
        robust: bounds on one device's influence (``[aggregator.robust]``).
        privacy: differential privacy (``[aggregator.privacy]``).
        liveness_timeout: seconds without a status message after which an agent counts as
            offline (NATS has no last will; MQTT's will is faster).
        status_every: seconds between ``federation_status`` re-sends (NATS has no retain).
        over_selection: ask ceil((1 + x)·cohort) agents, close at the cohort (Bonawitz 2019).
        sender_rate: a trainer's messages/s before decode, bursts of 2 s (``runtime.fairness``).
    """

    mode: TrainingMode = TrainingMode.SYNC
    async_: AsyncConfig = msgspec.field(default_factory=AsyncConfig, name="async")
    rounds: Annotated[int, msgspec.Meta(ge=0)] = 10
    continue_from: Annotated[str, msgspec.Meta(pattern=r"^(|last|run-[0-9]{4,})$")] = ""
    after_run: AfterRun = AfterRun.EXIT
    fraction_fit: Fraction = 1.0
    min_fit_clients: AtLeastOne = 2
    max_fit_clients: AtLeastOne = 1000
    min_available_clients: AtLeastOne = 2
    join_timeout: Positive = 60.0
    round_timeout: Positive = 60.0
    eval_every: Annotated[int, msgspec.Meta(ge=0)] = 1
    eval_timeout: Positive = 30.0
    seed: int = 0
    fit_config: dict[str, Scalar] = msgspec.field(default_factory=dict)
    eval_config: dict[str, Scalar] = msgspec.field(default_factory=dict)
    secure_aggregation: SecureAggregation = SecureAggregation.NONE
    secagg: SecAggConfig = SecAggConfig()
    strategy: StrategyConfig = StrategyConfig()
    robust: RobustConfig = RobustConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    liveness_timeout: Positive = 60.0
    status_every: Positive = 5.0
    over_selection: Annotated[float, msgspec.Meta(ge=0, le=4)] = 0.0
    sender_rate: Positive = 200.0

    def __post_init__(self) -> None:
        if self.min_fit_clients > self.max_fit_clients:
            raise ValueError(
                f"min_fit_clients ({self.min_fit_clients}) > max_fit_clients "
                f"({self.max_fit_clients})"
            )
        if self.min_fit_clients > self.min_available_clients:
            raise ValueError(
                f"min_fit_clients ({self.min_fit_clients}) > min_available_clients "
                f"({self.min_available_clients}): round 1 could never fill its cohort"
            )
        secure = self.secure_aggregation is SecureAggregation.SECAGG_PLUS
        if self.privacy.mode is PrivacyMode.DISTRIBUTED and not secure:
            raise ValueError("privacy mode 'distributed' needs secure_aggregation = 'secagg+'")
        if self.privacy.mode is not PrivacyMode.OFF and self.robust.aggregation != "mean":
            raise ValueError("[aggregator.robust] aggregation other than 'mean' has no DP analysis")
        if self.mode is TrainingMode.ASYNC:
            self.async_.check(
                privacy=self.privacy.mode is not PrivacyMode.OFF,
                aggregation=str(self.robust.aggregation),
                secagg=self.secagg.params if secure else None,
            )
        elif secure:
            try:
                self.secagg.params(self.min_fit_clients)
            except ConfigError as exc:
                raise ValueError(
                    f"secure_aggregation = 'secagg+' with min_fit_clients = "
                    f"{self.min_fit_clients}: {exc}"
                ) from exc


class TrainerConfig(_Config, frozen=True):
    """``[trainer]``: how the agent behaves as a trainer.

    Attributes:
        join_retry: seconds between ``join`` attempts until the aggregator admits us.
        model_wait: seconds to wait for the global model a ``fit_ins`` refers to.
        require_secure_aggregation: refuse rounds that would send the update in the clear.
        heartbeat: seconds between ``status: online`` messages (liveness).
        reveal_integer_arrays: under SecAgg+, send the trained model's integer arrays (a
            BatchNorm's ``num_batches_tracked``) beside the masked input, sealed to the
            aggregator, so they advance (``agent.strategy.carried``); false: send none
            (they then keep the model in force's values unless other survivors send theirs).
    """

    join_retry: Positive = 2.0
    model_wait: Positive = 30.0
    require_secure_aggregation: bool = False
    heartbeat: Positive = 15.0
    reveal_integer_arrays: bool = True


class LoggingConfig(_Config, frozen=True):
    """``[logging]``: ``level`` (debug/info/warning/error) and ``format`` (auto/json/console;
    auto is console on a TTY, JSON lines otherwise)."""

    level: str = "info"
    format: str = "auto"


class MetricsConfig(_Config, frozen=True):
    """``[metrics]``: a Prometheus ``/metrics`` endpoint on ``host:port`` (``port = 0``: off)."""

    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    host: str = "127.0.0.1"


class AgentConfig(_Config, frozen=True):
    """The whole file (``[p2p]``, ``[simulate]``: ``agent.p2p_settings``)."""

    role: Role
    agent_id: Name
    federation: Name
    bus_url: str
    state_dir: Path
    plugin: PluginConfig
    max_payload: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024
    aggregator: AggregatorConfig = AggregatorConfig()
    trainer: TrainerConfig = TrainerConfig()
    logging: LoggingConfig = LoggingConfig()
    tls: TlsConfig = TlsConfig()
    identity: IdentityConfig = IdentityConfig()
    metrics: MetricsConfig = MetricsConfig()
    transfer: TransferConfig = TransferConfig()
    p2p: P2PConfig = P2PConfig()
    simulate: SimulateConfig = SimulateConfig()

    def __post_init__(self) -> None:
        if self.role not in RUNTIME_ROLES:
            # msgspec checks the value is a Role; only the runtime roles make a config
            role = str(self.role)
            raise ValueError(f"Invalid role {role!r}, not trainer or aggregator - at `$.role`")
        if (need := self.transfer.chunk_size + ENVELOPE_MARGIN) > self.max_payload:
            size = self.transfer.chunk_size
            msg = f"[transfer] chunk_size = {size} needs max_payload >= {need}: lower one"
            raise ValueError(f"{msg} or raise the other ({self.max_payload})")
        ident = self.identity
        if ident.enabled and (ident.key_file is None or ident.ca_file is None):
            raise ValueError("[identity] needs key_file and ca_file with cert_file")

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read and validate a TOML file.

        Raises:
            ConfigError: unreadable file, bad TOML, unknown key, wrong type or value; the
                message names the file and the key path.
        """
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: bytes | str, *, source: str = "<config>") -> Self:
        """Validate TOML text. Raises ``ConfigError`` like ``load``."""
        try:
            return msgspec.toml.decode(text, type=cls, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from exc

    def to_toml(self) -> bytes:
        """The config as TOML (what ``fedbus demo`` writes for each agent process)."""
        return msgspec.toml.encode(self, enc_hook=str)


def _decode_path(type_: type, value: Any) -> Any:
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {type_}")
