"""`kid`: the command line. It parses arguments, calls the package, and maps errors to exit codes.

The work lives in the modules; each handler here is a few lines. Exit codes: 0 success, 1 an
unexpected error, and each :mod:`kidresearch.errors` class its own code (2 scenario, 3 feed or
build, 4 proposal, 5 access refused, 6 audit, 7 disclosure, 8 report,
9 analysis input).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kidresearch.errors import KidError


def _print(text: object) -> None:
    sys.stdout.write(f"{text}\n")


# ---------------------------------------------------------------------------------- synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from kidresearch.synth import generate

    source = args.scenario if args.scenario is not None else args.preset
    result = generate(source, out=args.out, seed=args.seed, progress=not args.quiet)
    _print(result.summary().to_string())
    _print(f"Synthetic KID raw feeds written to {Path(args.out).resolve()}")
    return 0


# ---------------------------------------------------------------------------------- build
def _cmd_build(args: argparse.Namespace) -> int:
    from kidresearch.linkage import build

    result = build(
        args.raw,
        args.out,
        key_file=args.key_file,
        version=args.version,
        progress=not args.quiet,
        full=args.full,
    )
    _print(result.summary().to_string())
    how = result.report.get("build", {})
    if how.get("mode") == "incremental":
        _print(
            f"Built incrementally from {how['previous']}: new months "
            f"{', '.join(how['new_months'])}; {how['files_reused']} files reused, "
            f"{how['files_written']} written"
        )
    elif how.get("reason") and not result.reused:
        _print(f"Full build ({how['reason']})")
    _print(f"KID version {result.version} published in {Path(args.out).resolve()}")
    return 0


def _cmd_key_new(args: argparse.Namespace) -> int:
    from kidresearch.linkage import new_key_file

    path = new_key_file(args.path)
    _print(f"New pseudonymisation key written to {path} (keep it outside the research environment)")
    return 0


# ---------------------------------------------------------------------------------- docs
def _cmd_docs(args: argparse.Namespace) -> int:
    from kidresearch.schema import data_dictionary_markdown

    text = data_dictionary_markdown()
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            _print(f"{out} is out of date: run `kid docs --out {out}`")
            return 1
        _print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    _print(f"Data dictionary written to {out}")
    return 0


# ---------------------------------------------------------------------------------- audit
def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from kidresearch.audit import verify

    result = verify(data=args.data)
    _print(result.summary())
    return 0 if result.ok else 6


def _cmd_audit_show(args: argparse.Namespace) -> int:
    from kidresearch.audit import show

    _print(show(data=args.data, proposal=args.proposal).to_string(index=False))
    return 0


# ---------------------------------------------------------------------------------- outputs
def _cmd_outputs_check(args: argparse.Namespace) -> int:
    from kidresearch.sdc import check_folder

    result = check_folder(args.dir, policy=args.policy, proposal=args.proposal)
    _print(result.summary().to_string(index=False))
    return 0 if result.ok else 7


# ---------------------------------------------------------------------------------- reports
def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"-p expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        params[key.strip()] = value
    return params


def _cmd_report_run(args: argparse.Namespace) -> int:
    from kidresearch.reports import run

    result = run(
        args.proposal,
        notebooks=args.notebooks,
        parameters=_parse_params(args.param),
        data=args.data,
        out=args.out,
        progress=not args.quiet,
    )
    _print(result.summary().to_string(index=False))
    _print(f"Report written to {result.run_dir}")
    return 0 if result.ok else 8


def _cmd_report_verify(args: argparse.Namespace) -> int:
    from kidresearch.reports import verify

    result = verify(args.run_dir, data=args.data)
    _print(result)
    return 0 if result.ok else 8


def _cmd_register(args: argparse.Namespace) -> int:
    from kidresearch.reports import build_register

    path = build_register(proposals=args.proposals, reports=args.reports, out=args.out)
    _print(f"Public register written to {path}")
    return 0


# ---------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from kidresearch.demo import run_demo

    return run_demo(out=args.out, seed=args.seed, preset=args.preset, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The ``kid`` argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="kid", description="kidresearch: the research environment for the (synthetic) KID."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic KID (raw monthly feeds + truth.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="built-in scenario: demo (50,000 people) or kent (1.9M)")
    src.add_argument("--scenario", type=Path, help="scenario YAML file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("build", help="link, pseudonymise and publish a research KID version")
    p.add_argument("--raw", type=Path, required=True, help="raw feeds folder (from `kid synth`)")
    p.add_argument("--out", type=Path, required=True, help="KID folder (versions are added here)")
    p.add_argument("--key-file", type=Path, required=True, help="secret pseudonymisation key")
    p.add_argument("--version", default=None, help="version label YYYY-MM (default: last extract)")
    p.add_argument(
        "--full",
        action="store_true",
        help="rebuild from all extracts (default: add new months to the previous version)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("key", help="pseudonymisation keys")
    ksub = p.add_subparsers(dest="key_command", required=True)
    k = ksub.add_parser("new", help="write a new random key file")
    k.add_argument("path", type=Path)
    k.set_defaults(func=_cmd_key_new)

    p = sub.add_parser("docs", help="write docs/data_dictionary.md from the schema")
    p.add_argument("--out", type=Path, default=Path("docs/data_dictionary.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    p.set_defaults(func=_cmd_docs)

    p = sub.add_parser("audit", help="the hash-chained access log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    a = asub.add_parser("verify", help="check the log for edited, removed or reordered entries")
    a.add_argument("--data", type=Path, default=None, help="KID folder (default: $KID_DATA)")
    a.set_defaults(func=_cmd_audit_verify)
    a = asub.add_parser("show", help="list logged activity")
    a.add_argument("--data", type=Path, default=None, help="KID folder (default: $KID_DATA)")
    a.add_argument("--proposal", default=None, help="only this proposal id")
    a.set_defaults(func=_cmd_audit_show)

    p = sub.add_parser("outputs", help="output checking (statistical disclosure control)")
    osub = p.add_subparsers(dest="outputs_command", required=True)
    o = osub.add_parser("check", help="re-check a folder of CSV outputs; exit 7 on any failure")
    o.add_argument("dir", type=Path)
    o.add_argument("--policy", type=Path, default=None, help="disclosure policy YAML")
    o.add_argument("--proposal", type=Path, default=None, help="take the policy from a proposal")
    o.set_defaults(func=_cmd_outputs_check)

    p = sub.add_parser("report", help="papermill batch reports for approved proposals")
    rsub = p.add_subparsers(dest="report_command", required=True)
    r = rsub.add_parser("run", help="run a proposal's approved notebooks")
    r.add_argument("proposal", help="proposal id or YAML file")
    r.add_argument("--notebooks", nargs="*", default=None, help="subset of approved notebooks")
    r.add_argument("-p", "--param", action="append", default=[], help="parameter key=value")
    r.add_argument("--data", type=Path, default=None, help="KID folder (default: $KID_DATA)")
    r.add_argument("--out", type=Path, default=Path("reports"), help="reports folder")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    r.set_defaults(func=_cmd_report_run)
    r = rsub.add_parser("verify", help="re-execute a run and compare its released outputs")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--data", type=Path, default=None, help="KID folder (default: $KID_DATA)")
    r.set_defaults(func=_cmd_report_verify)

    p = sub.add_parser("register", help="build the public register of proposals and outputs")
    p.add_argument("--proposals", type=Path, default=Path("proposals"))
    p.add_argument("--reports", type=Path, default=Path("reports"))
    p.add_argument("--out", type=Path, default=Path("reports/register.md"))
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("demo", help="synthetic KID -> build -> report batch, end to end")
    p.add_argument("--out", type=Path, default=Path("demo_data"))
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kid`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KidError as exc:
        sys.stderr.write(f"kid {args.command}: {type(exc).__name__}: {exc}\n")
        return exc.exit_code
    except FileNotFoundError as exc:
        sys.stderr.write(f"kid {args.command}: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
