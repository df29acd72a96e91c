"""The command registry and the flags every run setting gets (`sparsity` -> `--sparsity`), shared by
`anymask.cli` and the command groups kept in their own modules (`anymask.cli_ensemble`)."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable, Sequence

from anymask.config import RunConfig, field_help, field_types, section_of

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def add(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return add


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: Sequence[str] | None = None,
    hidden: Sequence[str] = (),
    title: str = "run settings (also valid as keys in --config files)",
) -> None:
    """One flag per setting; unset flags stay absent so the config file's values survive.

    `hidden` settings are accepted but left out of --help (prune takes training settings for lth only).
    """
    helps, types = field_help(), field_types()
    group = parser.add_argument_group(title)
    for key in [*(keys or list(types)), *hidden]:
        hint = types[key]
        default = getattr(RunConfig(), section_of(key)).__dict__[key]
        text = helps.get(key, "")
        if "default" not in text and default is not None:  # some helps already say what unset means
            text += f" (default: {default})"
        text = text.replace("%", "%%")  # argparse formats help
        help_text = argparse.SUPPRESS if key in hidden else text
        if hint is bool:
            group.add_argument(
                flag_name(key),
                dest=key,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            metavar = "LIST" if typing.get_origin(hint) is list else key.upper()
            group.add_argument(
                flag_name(key), dest=key, default=argparse.SUPPRESS, metavar=metavar, help=help_text
            )
