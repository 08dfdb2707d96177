"""The `netad` command line: run, train, score, check-config, synth.

Only this module picks exit codes: 78 (EX_CONFIG) for a bad config, rule file or model
bundle, 66 (EX_NOINPUT) for an unreadable capture, 1 for anything unexpected.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from detector import __version__, jitcache
from detector._exit import EX_DATAERR, InputFile, errors_to_exit_codes, without_teardown
from detector._lazy import LazyGroup
from detector.errors import ConfigError

_errors_to_exit_codes = errors_to_exit_codes


def _load(config: str | None):
    from detector.config import load_config
    from detector.logging import configure

    cfg = load_config(config)
    configure(cfg.logging.level, cfg.logging.format)
    return cfg


config_option = click.option("-c", "--config", type=click.Path(dir_okay=False), default=None,
                             help="YAML config file (default: built-in defaults).")
conn_log_option = click.option("--conn-log", "conn_logs", multiple=True, type=InputFile(),
                               help="Zeek conn.log (TSV or JSON, .gz too) read as flow records, instead of --pcap (repeatable).")


def _inputs(pcaps: tuple[str, ...], conn_logs: tuple[str, ...]) -> tuple[list[Path], bool]:
    """(input files, whether they are flow records): captures or conn.logs, one kind."""
    if pcaps and conn_logs:
        raise click.UsageError("give captures (--pcap) or Zeek conn.logs (--conn-log), not both: a model has one feature schema")
    if not pcaps and not conn_logs:
        raise click.UsageError("give the input: --pcap CAPTURE or --conn-log CONN_LOG (repeatable)")
    return [Path(p) for p in conn_logs or pcaps], bool(conn_logs)


# Commands in their own modules, imported only when used: (module:attribute, short help for `netad --help`).
LAZY_COMMANDS = {
    "bench": ("detector.bench.cli:bench", "Benchmarks: throughput of the capture stages, offline and live."),
    "eval": (
        "detector.eval.cli:eval_command",
        "Labelled evaluation: train (or load) a model, score the test part through the "
        "daemon's stages, compare with two baselines, write metrics.json and a report.",
    ),
    "splice": (
        "detector.eval.cli:splice_command",
        "Insert real attack captures (and generated behaviours) into a benign capture, with exact ground truth.",
    ),
    "explain": (
        "detector.service.explain.cli:explain",
        "Explain an incident: what its entity did, how unusual that is for it, and the flows behind it; writes its timeline PNG.",
    ),
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netad")
def main() -> None:
    """netad: network-traffic anomaly detection with a streaming LSTM autoencoder."""
    jitcache.repair()  # before any compiled kernel runs


@main.command()
@config_option
@click.option("--sink", "sinks", multiple=True, help="Extra incident sink URL (repeatable), e.g. syslog+tcp://127.0.0.1:6514?format=cef")
@_errors_to_exit_codes
def run(config: str | None, sinks: tuple[str, ...]) -> None:
    """Run the daemon: capture, score, and send incidents to the sinks."""
    from detector.service import _held_reload

    _held_reload.hold()
    cfg = _load(config)
    if cfg.role != "all-in-one":  # sensor or scorer, over Kafka
        from detector.service.kafka import run_role

        sys.exit(run_role(cfg, list(sinks), config))
    from detector.service.daemon import Daemon

    sys.exit(Daemon(config, cfg, list(sinks)).run())


@main.command("check-config")
@config_option
@_errors_to_exit_codes
def check_config(config: str | None) -> None:
    """Check that `netad run -c CONFIG` would start, as `suricata -T` does, without side
    effects: the config, its rule files, the source, the model bundle, the sinks and the
    state directory; every problem on stderr as `file:line: key: reason`, exit 78."""
    from detector.service.preflight import check

    cfg = _load(config)
    problems = check(cfg, config)
    if problems:
        raise ConfigError("\n".join(problems))
    click.echo(f"{config or '<defaults>'}: ok ({len(cfg.incidents.rules)} rule file(s), {len(cfg.sinks)} sink(s), "
               f"model {cfg.model.path if cfg.role != 'sensor' else '(none: sensor)'})")


@main.command()
@config_option
@click.option("--pcap", "pcaps", multiple=True, type=InputFile(), help="Benign training capture (repeatable).")
@conn_log_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model bundle directory to write.")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False),
              help="Ground-truth CSV: windows overlapping its positive intervals are left out.")
@click.option("--before-first-attack", is_flag=True, help="With --truth: train only on windows before the first positive interval.")
@click.option("--start-s", type=float, default=None, help="Use only traffic from this offset (s) after the first packet (or record).")
@click.option("--end-s", type=float, default=None, help="Use only traffic up to this offset (s) after the first packet (or record).")
@_errors_to_exit_codes
def train(config, pcaps, conn_logs, out, truth, before_first_attack, start_s, end_s) -> None:
    """Train a model bundle on benign captures (packet model) or Zeek conn.logs (flow model)."""
    from detector.service.training import train_from_captures

    if before_first_attack and not truth:  # without the truth it would train on the attacks, silently
        raise click.UsageError("--before-first-attack needs --truth (the CSV that says when the first attack starts)")

    inputs, flow_records = _inputs(pcaps, conn_logs)
    cfg = _load(config)
    damage: dict[str, str] = {}
    bundle = train_from_captures(cfg, inputs, Path(out), truth=truth, before_first_attack=before_first_attack,
                                 start_s=start_s, end_s=end_s, progress=sys.stderr.isatty(), flow_records=flow_records,
                                 damage=damage)
    summary = bundle.training["classes"]
    click.echo(f"model {bundle.version} written to {out} (feature schema {bundle.schema.name} v{bundle.schema.version})")
    for cls, cm in bundle.classes.items():
        s = summary[cls]
        click.echo(f"  {cls:<7} {s['entities']:>5} entities {s['train_windows']:>7} train / {s['validation_windows']:>6} validation windows, "
                   f"threshold {cm.threshold.value:.4f} ({cm.threshold.method}{', ' + cm.threshold.reason if cm.threshold.reason else ''})")
        if cls in bundle.host_groups:
            click.echo(f"          a host group: the hosts of {', '.join(bundle.host_groups[cls])} (training.host_groups)")
        if cm.members:
            click.echo(f"          {len(cm.members)} members, each window scored by their median score in their own thresholds: "
                       + ", ".join(f"{m['threshold']:.4f} (seed {m['seed']})" for m in s.get("members", [])))
        if "margin" in s:
            click.echo(f"          largest held-out benign window {s['largest_held_out']:.4f}, margin {s['margin']:.1%}")
        if "false_alarms_per_day" in s:
            click.echo(f"          {s['entities_per_window']:g} entities a window: {s['false_alarms_per_day']:.3g} false alarms "
                       f"a day expected at the target {cm.threshold.target_false_alarm:g} per entity window")
        click.echo(f"          a run of windows adds up above {cm.threshold.allowance:g} of the threshold")
        levelled = [(m.threshold.levels, f" (member {i})" if cm.members else "") for i, m in enumerate(cm.members or [cm])]
        if any(levels for levels, _ in levelled):  # model.levels
            click.echo("          hosts judged in their own level, busier than the class's: "
                       + ", ".join(f"{len(levels)}{member}, up to x{max(levels.values(), default=1.0):.3g}"
                                   f"{' (' + max(levels, key=levels.__getitem__) + ')' if levels else ''}"
                                   for levels, member in levelled))
        if cm.scaler.error_scale is not None:
            scale = cm.scaler.error_scale
            noisiest = [i for i in sorted(range(len(scale)), key=lambda i: -scale[i])[:3] if scale[i] > 1.0]
            named = ", ".join(f"{bundle.schema.features[i]} /{scale[i]:.3g}" for i in noisiest) or "none above 1"
            click.echo(f"          each feature's error counted in units of its held-out error; the noisiest: {named}")
        if "threshold_interval" in s:
            low, high = s["threshold_interval"]
            click.echo(f"          threshold resampled over the held-out windows: {low:.4f} .. {high:.4f} (90 %)")
        for warning in s.get("warnings", []):
            click.echo(f"          warning: {warning}")
    for warning in bundle.training.get("warnings", []):
        click.echo(f"  warning: {warning}")
    if bundle.history is not None:
        h = bundle.history
        click.echo(f"  peer history carried into scoring: {h.rows('entities'):,} entities, {h.rows('peers'):,} peers, "
                   f"{h.rows('ports'):,} ports (the training span's last {cfg.windows.history_s / 3600:g} h)")
    warmup_s = bundle.training["history_warmup_s"]
    if warmup_s < cfg.windows.history_warmup_s:
        click.echo(f"  new peers and ports counted from {warmup_s / 60:.1f} min into each host's history, not "
                   f"{cfg.windows.history_warmup_s / 60:g} min (windows.history_warmup_s): at most a quarter of the "
                   "training span, so the model learns what those inputs read")
    _exit_if_damaged(damage, "trained on")


@main.command()
@config_option
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None, help="Model bundle (default: model.path from the config).")
@click.option("--pcap", "pcaps", multiple=True, type=InputFile(), help="Capture to replay (repeatable).")
@conn_log_option
@click.option("--scores", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write window scores (JSON lines) here; - for standard output.")
@click.option("--incidents", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write incident events (ECS JSON lines) here; - for standard output (then the summary goes to stderr).")
@click.option("--sink", "sinks", multiple=True, help="Extra incident sink URL (repeatable).")
@without_teardown
@_errors_to_exit_codes
def score(config, model_dir, pcaps, conn_logs, scores, incidents, sinks) -> None:
    """Replay captures (or Zeek conn.logs) as fast as possible through the daemon's stages.

    Data goes to stdout, logs to stderr: with `--incidents -` (or `--scores -`) stdout holds
    only those JSON lines, and the summary line moves to stderr."""
    from detector.service.offline import STDOUT, score_captures

    inputs, flow_records = _inputs(pcaps, conn_logs)
    if scores == STDOUT and incidents == STDOUT:
        raise click.UsageError("only one of --scores and --incidents can be - (standard output)")
    cfg = _load(config)
    damage: dict[str, str] = {}
    stats = score_captures(cfg, inputs, model_dir=model_dir, scores=scores, incidents=incidents, sinks=list(sinks),
                           flow_records=flow_records, damage=damage)
    click.echo(" ".join(f"{k}={v}" for k, v in {**stats, "damaged_inputs": len(damage)}.items()), err=STDOUT in (scores, incidents))
    _exit_if_damaged(damage, "scored")


def _exit_if_damaged(damage: dict[str, str], done: str) -> None:
    """Input cut short by damage: the work is done on what came before it, and said so, on
    stderr and in the exit status (65, EX_DATAERR), so that a script does not take a half
    capture for a whole one."""
    for path, what in damage.items():
        click.echo(f"netad: {path}: {what}; {done} what came before it", err=True)
    if damage:
        sys.exit(EX_DATAERR)


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="pcap file to write.")
@click.option("--truth", type=click.Path(dir_okay=False), default=None, help="Ground-truth CSV of the injected attacks.")
@click.option("--profile", type=click.Choice(["demo", "bench"]), default="demo", show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--benign-s", type=float, default=None, help="Benign prefix duration (demo).")
@click.option("--attack-s", type=float, default=None, help="Duration of the part with attacks (demo).")
@click.option("--packets", type=int, default=None, help="Number of packets (bench).")
@click.option("--hosts", type=int, default=None, help="Number of workstations (demo 20, bench 4000).")
@click.option("--start-epoch", "start_epoch_s", type=float, default=1_700_000_040.0, show_default=True,
              help="Timestamp of the first packet (the default is minute-aligned, so windows are whole).")
@click.option("--snaplen", type=int, default=None, help="Cut frames to this many bytes (>= 64).")
@_errors_to_exit_codes
def synth(out, truth, profile, seed, benign_s, attack_s, packets, hosts, start_epoch_s, snaplen) -> None:
    """Generate a capture of a small office network with injected attacks (and their truth)."""
    from detector.synth.generate import generate

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        res = generate(Path(out), Path(truth) if truth else None, profile=profile, seed=seed, benign_s=benign_s,
                       attack_s=attack_s, hosts=hosts, packets=packets, start_epoch_s=start_epoch_s, snaplen=snaplen,
                       progress=sys.stderr.isatty())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {res.packets:,} packets to {out} ({res.end_epoch_s - res.start_epoch_s:.0f} s, home net {res.home_net})")
    for a in res.attacks:
        start_s, end_s = a.start_epoch_s - res.start_epoch_s, a.end_epoch_s - res.start_epoch_s
        click.echo(f"  {a.event:<24} {start_s:>8.0f}s .. {end_s:>6.0f}s  attacker={a.attacker} target={a.target}")


if __name__ == "__main__":
    main()
