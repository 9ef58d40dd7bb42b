"""The Dataflow Flex Template of ``profilestream run``: its ``metadata.json``, built from the CLI itself.

Every flag of ``profilestream run`` (:func:`pipelines.cli.run_parser`) becomes one template parameter, so the template
can never offer a flag the CLI lacks nor miss one it has::

    python -m pipelines.flex_template --out deploy/dataflow/metadata.json     # what `make flex-template` runs

Dataflow hands a launched template its parameters as ``--name=value``; :func:`launcher_argv` turns the ones for
switches (``--batch=true``) back into the bare flags argparse expects. ``deploy/dataflow/main.py`` is the launcher
that uses it, and ``deploy/dataflow/Dockerfile`` the image it runs in.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.cli import run_parser

TEMPLATE_NAME = "profilestream"
TEMPLATE_DESCRIPTION = (
    "Streaming customer-profile pipeline: XDM messages from Pub/Sub are decoded, validated, identity-stitched and "
    "merged into profiles, and written to a Parquet lake (profilestream run)."
)
_SWITCH_VALUES = {"true": True, "false": False}
# Regexes for the flags whose values have a fixed shape (Java regex syntax, as Dataflow checks them).
_REGEXES = {
    "source": [r"^(replay:.+|pubsub:projects/[^/]+/subscriptions/[^/]+)$"],
    "dead_letter_topic": [r"^projects/[^/]+/topics/[^/]+$"],
}


def run_flags() -> list[argparse.Action]:
    """The ``run`` parser's flags, in the order it declares them (``--help`` excluded)."""
    return [
        action
        for action in run_parser()._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def metadata() -> dict[str, Any]:
    """The Flex Template metadata: the template's name and description and one parameter per ``run`` flag."""
    return {
        "name": TEMPLATE_NAME,
        "description": TEMPLATE_DESCRIPTION,
        "streaming": True,
        "parameters": [_parameter(flag) for flag in run_flags()],
    }


def _parameter(flag: argparse.Action) -> dict[str, Any]:
    name = _parameter_name(flag)
    parameter: dict[str, Any] = {
        "name": name,
        "label": name.replace("-", " ").capitalize(),
        "helpText": flag.help or "",
        "isOptional": not flag.required,
    }
    if _is_switch(flag):
        parameter["regexes"] = ["^(true|false)$"]
    elif flag.type is int:
        parameter["regexes"] = ["^[0-9]+$"]
    elif flag.dest in _REGEXES:
        parameter["regexes"] = _REGEXES[flag.dest]
    return parameter


def _parameter_name(flag: argparse.Action) -> str:
    """The flag without its dashes: Dataflow passes the parameter back as ``--<name>=value``."""
    return flag.option_strings[0].removeprefix("--")


def _is_switch(flag: argparse.Action) -> bool:
    return isinstance(flag, argparse._StoreTrueAction)


def launcher_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as Dataflow passes it, with each switch's ``--flag=true`` made ``--flag`` and ``--flag=false`` dropped.

    Every other argument, Beam's options included, passes through unchanged.
    """
    switches = {flag.option_strings[0] for flag in run_flags() if _is_switch(flag)}
    converted = []
    for argument in argv:
        flag, _, value = argument.partition("=")
        if flag in switches and value.lower() in _SWITCH_VALUES:
            if _SWITCH_VALUES[value.lower()]:
                converted.append(flag)
        else:
            converted.append(argument)
    return converted


def write_metadata(path: Path) -> None:
    """Writes :func:`metadata` to ``path`` as indented JSON with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata(), indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the Dataflow Flex Template metadata of `profilestream run`.")
    parser.add_argument("--out", type=Path, required=True, help="metadata file to write")
    args = parser.parse_args(argv)
    write_metadata(args.out)


if __name__ == "__main__":
    main()
