"""The `netad eval` and `netad splice` commands (registered on the main group by detector.cli).

Heavy imports (torch, matplotlib, numba) happen inside the commands, so `netad --help`
stays fast. Exit codes follow detector.cli: 78 (EX_CONFIG) for a bad config, truth file,
argument or model bundle, 66 (EX_NOINPUT) for an unreadable capture.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from detector._exit import InputFile, errors_to_exit_codes
from detector.errors import ConfigError

_exit_codes = errors_to_exit_codes


_existing_file = click.Path(exists=True, dir_okay=False)


@click.command("splice")
@click.option("--benign", required=True, type=InputFile(), help="Benign capture the attacks are inserted into.")
@click.option("--attack", "attacks", multiple=True, metavar="FILE@OFFSET[:OPTS]",
              help="Attack capture and where its first packet goes, in seconds after the benign capture's first packet. "
                   "OPTS (comma-separated): rewrite-src=IP (every attacker address -> IP), rewrite-dst=IP (victim -> IP), "
                   "event=NAME (default: from the file name), "
                   "slow=FACTOR (stretch the attack's timeline FACTOR times: low and slow). Repeatable.")
@click.option("--attacks", "attack_list", type=_existing_file, default=None,
              help="YAML file with `attacks:`, a list of {file, offset_s, rewrite_src, rewrite_dst, event, slow} (added to --attack).")
@click.option("--scenarios", "scenario_list", type=_existing_file, default=None,
              help="YAML scenario list: generated behaviours that only a host's history reveals (beacon, onset, upload, role_change) "
                   "and optionally `attacks:` beside them; see docs/EVALUATION.md.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="pcap file to write.")
@click.option("--truth", required=True, type=click.Path(dir_okay=False), help="Ground-truth CSV to write (one row per attack and behaviour).")
@click.option("--benign-truth", type=_existing_file, default=None, help="Ground truth of the benign capture, copied first.")
@_exit_codes
def splice_command(benign: str, attacks: tuple[str, ...], attack_list: str | None, scenario_list: str | None, out: str, truth: str,
                   benign_truth: str | None) -> None:
    """Insert real attack captures (and generated behaviours) into a benign capture, with exact ground truth."""
    from detector.eval.scenarios import load_scenario_list
    from detector.eval.splice import AttackSpec, load_attack_list, splice

    specs = [AttackSpec.parse(a) for a in attacks] + (load_attack_list(attack_list) if attack_list else [])
    scenarios = load_scenario_list(scenario_list) if scenario_list else None
    if not specs and scenarios is None:
        raise ConfigError("splice: give at least one --attack, an --attacks file or a --scenarios file")
    res = splice(Path(benign), specs, Path(out), Path(truth), benign_truth=benign_truth, scenarios=scenarios)
    click.echo(f"wrote {res.packets:,} packets ({res.benign_packets:,} benign) to {out}; truth {truth}")
    for a in res.attacks:
        click.echo(f"  {a.event:<28} +{(a.start_ns - res.start_ns) / 1e9:>10.3f}s .. +{(a.end_ns - res.start_ns) / 1e9:>10.3f}s "
                   f"{a.packets:>7,} packets attacker={a.attacker} target={a.target}"
                   + (f" ({a.dropped} frames dropped by the link type)" if a.dropped else ""))
    for b in res.behaviours:
        click.echo(f"  {b.event:<28} +{(b.start_ns - res.start_ns) / 1e9:>10.3f}s .. +{(b.end_ns - res.start_ns) / 1e9:>10.3f}s "
                   f"{b.packets:>7,} packets {b.description.split(' kind=')[0]}")
    for warning in res.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.command("eval")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None, help="YAML config file (default: built-in defaults).")
@click.option("--pcap", "--test-pcap", "pcaps", multiple=True, type=InputFile(),
              help="Test capture (repeatable); with --train-end-s, the one capture split in time.")
@click.option("--conn-log", "conn_logs", multiple=True, type=InputFile(),
              help="Zeek conn.log (TSV or JSON, .gz too) scored as flow records, instead of --pcap (repeatable).")
@click.option("--truth", type=_existing_file, default=None,
              help="Ground-truth CSV (is_attack_or_fault 1 = positive). Without it all traffic is benign.")
@click.option("--train-pcap", "train_pcaps", multiple=True, type=InputFile(),
              help="Benign training capture (repeatable): train on these, test on --pcap.")
@click.option("--train-conn-log", "train_conn_logs", multiple=True, type=InputFile(),
              help="Benign training conn.log (repeatable), with --conn-log.")
@click.option("--train-end-s", type=float, default=None,
              help="Time split: train on the first S seconds of --pcap (positive intervals left out), test on the rest.")
@click.option("--train-start-s", type=float, default=None,
              help="The mirror split: train on --pcap from S seconds to its end, test on its first S seconds.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Use this model bundle instead of training one.")
@click.option("--attacker", "attackers", multiple=True, metavar="[EVENT=]IP",
              help="Attacker of positive intervals whose description names none (EVENT may be a glob, e.g. 'BAD-PORTSCAN*'). Repeatable.")
@click.option("--visible-min-packets", type=int, default=10, show_default=True,
              help="An interval is visible with at least this many packets of its attacker inside it.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for metrics.json, report.md, report.png, scores.jsonl and the model.")
@_exit_codes
def eval_command(config, pcaps, conn_logs, truth, train_pcaps, train_conn_logs, train_end_s, train_start_s, model_dir, attackers,
                 visible_min_packets, out) -> None:
    """Labelled evaluation: train (or load) a model, score the test part through the daemon's
    stages, compare with two baselines, write metrics.json and a report."""
    from detector.config import load_config
    from detector.eval.evaluate import EvalPlan, evaluate
    from detector.logging import configure

    if (pcaps or train_pcaps) and (conn_logs or train_conn_logs):
        raise click.UsageError("give captures (--pcap, --train-pcap) or Zeek conn.logs (--conn-log, --train-conn-log), not both: "
                               "a model has one feature schema")
    if not pcaps and not conn_logs:
        raise click.UsageError("give the test input: --pcap CAPTURE or --conn-log CONN_LOG (repeatable)")
    cfg = load_config(config)
    configure(cfg.logging.level, cfg.logging.format)
    plan = EvalPlan(
        pcaps=[Path(p) for p in conn_logs or pcaps],
        out=Path(out),
        truth=Path(truth) if truth else None,
        train_pcaps=[Path(p) for p in train_conn_logs or train_pcaps],
        flow_records=bool(conn_logs),
        train_end_s=train_end_s,
        train_start_s=train_start_s,
        model_dir=Path(model_dir) if model_dir else None,
        attackers=list(attackers),
        visible_min_packets=visible_min_packets,
        config_path=config,
    )
    result = evaluate(cfg, plan, progress=sys.stderr.isatty())
    test = result["test"]  # a rate per day read off a few benign hours says little: print those hours beside it
    click.echo(f"{out}/metrics.json, report.md, report.png written (test {test['hours']:.2f} h, {test['benign_hours']:.2f} h benign)")
    for cls in ("global", "host"):
        m = result[cls]
        aucs = "  ".join(f"{d}={'n/a' if s is None or s['roc_auc'] is None else format(s['roc_auc'], '.4f')}" for d, s in m["detectors"].items())
        inc = m["incidents"]
        per_day = "n/a" if inc["per_day"] is None else format(inc["per_day"], ".2f")
        untouched = inc.get("untouched_hosts")
        on_untouched = "" if untouched is None else (
            f"; on hosts no interval names, over the whole test span: {untouched['benign']} "
            f"({'n/a' if untouched['per_day'] is None else format(untouched['per_day'], '.2f')}/day)")
        click.echo(f"  {cls:<6} ROC AUC {aucs}  benign incidents {inc['benign']} ({per_day}/day){on_untouched}")
