"""The command line of `experiments/train.py` before absl sees it: the config file it names, its
``--config.FIELD=VALUE`` overrides checked against the config's fields, and ``--config.help``'s table.

Every problem is a `ConfigError` with one line naming the flag or field, so that the command can
print one ``error: ...`` line whether or not ``--config`` is given:

    argv, config = prepare(sys.argv, default_path)   # then absl parses argv

`prepare` inserts --config=default_path unless argv names a config file (`with_config`), loads it
keeping the file's own reason if it fails (`load_config`), and checks the overrides' fields and
value types (`check_overrides`).
"""

import difflib
import importlib.util
import re
from pathlib import Path

import ml_collections
from absl import app, flags, logging

from saejax.config import field_docs
from saejax.errors import ConfigError

FLAG = "config"
HELP = f"--{FLAG}.help"  # not a field: prints `field_table` (no config has a field named "help")
_CONFIG_FLAG = re.compile(rf"^--?{FLAG}(=|$)")
_OVERRIDE = re.compile(rf"^--?(no)?{FLAG}\.([^=]+)(?:=(.*))?$", re.DOTALL)
_PARSERS = {int: (flags.IntegerParser(), "an integer"), float: (flags.FloatParser(), "a number"),
            bool: (flags.BooleanParser(), "true or false")}


def _flag_args(argv: list[str]) -> list[str]:
    """argv[1:] up to a "--" (after which absl reads positional arguments only)."""
    args = list(argv[1:])
    return args[:args.index("--")] if "--" in args else args


def config_spec(argv: list[str]) -> str | None:
    """The value of the last --config=PATH[:VARIANT] (or --config PATH) in argv; None without one."""
    args, found = _flag_args(argv), None
    for i, arg in enumerate(args):
        match = _CONFIG_FLAG.match(arg)
        if match:
            found = arg.split("=", 1)[1] if match.group(1) else (args[i + 1] if i + 1 < len(args) else "")
    return found


def with_config(argv: list[str], default: str) -> list[str]:
    """argv with --config=`default` right after the program name when argv names no config file, so
    that every override is read against a config file (the one the command defaults to)."""
    return list(argv) if config_spec(argv) is not None else [argv[0], f"--{FLAG}={default}", *argv[1:]]


def prepare(argv: list[str], default: str) -> tuple[list[str], ml_collections.ConfigDict]:
    """(argv, its flag files expanded, with --config=`default` unless it names a config file; that
    config file's config) with every --config.FIELD override of argv checked against it (none with
    --config.help); ConfigError naming the culprit otherwise."""
    argv = with_config(flags.FLAGS.read_flags_from_files(argv, force_gnu=False), default)  # --flagfile expanded
    config = load_config(config_spec(argv))
    if not asks_for_help(argv):
        check_overrides(config, argv)
    return argv, config


def asks_for_help(argv: list[str]) -> bool:
    """Whether argv holds --config.help."""
    return HELP in _flag_args(argv)


def overrides(argv: list[str]) -> list[tuple[str, str | None]]:
    """(field path, value) of every --config.FIELD=VALUE in argv, in order; value None for the forms
    absl completes itself (--config.FIELD for true, --noconfig.FIELD for false, --config.FIELD VALUE)."""
    found = []
    for arg in _flag_args(argv):
        match = _OVERRIDE.match(arg)
        if match and arg != HELP:
            found.append((match.group(2), None if match.group(1) else match.group(3)))
    return found


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(VARIANT)` of the config file PATH named by "PATH[:VARIANT]", as ml_collections
    reads it; a missing file, a file that fails to run, or a variant it refuses is one ConfigError
    carrying the file's own reason."""
    path, *variant = spec.split(":", 1)
    where = f"--{FLAG}={spec}"
    if not path or not Path(path).is_file():
        raise ConfigError(f"{where}: no config file {path!r}" if path else f"{where}: the config file path is empty")
    try:
        module_spec = importlib.util.spec_from_file_location(f"{FLAG}_file", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(*variant)
    except Exception as e:  # the config file's own code: whatever it raises is its reason
        raise ConfigError(f"{where}: {_reason(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{where}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


def _reason(e: BaseException) -> str:
    """One line for an exception raised by a config file: its message (first line), or its type."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (SyntaxError, ImportError, NameError, AttributeError, KeyError)) or not message:
        return f"{type(e).__name__}: {message}".rstrip(": ")
    return message


def field_paths(config: ml_collections.ConfigDict) -> list[str]:
    """The dotted paths of every leaf field of `config` ("seed", "sae.arch", ...): the base config's
    fields in their documented order (`saejax.config.FIELDS`), then any others alphabetically."""
    order = {path: i for i, path in enumerate(field_docs())}
    return sorted(_leaf_paths(config), key=lambda path: (order.get(path, len(order)), path))


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    paths = []
    for name in config.keys():
        value = config[name]
        if isinstance(value, ml_collections.ConfigDict):
            paths += _leaf_paths(value, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _sections(config: ml_collections.ConfigDict) -> set[str]:
    """Dotted paths of the nested ConfigDicts of `config`."""
    return {path.rsplit(".", 1)[0] for path in field_paths(config) if "." in path}


def unknown_field_message(path: str, known: list[str]) -> str:
    """One line for an override naming no field: the closest field, if one is close (within the
    path's section when it names one, else over every field's path)."""
    section, _, name = path.rpartition(".")
    siblings = {p.rpartition(".")[2]: p for p in known if p.rpartition(".")[0] == section}
    if section and siblings:
        close = [siblings[n] for n in difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"{HELP} lists the fields"
    return f"unknown config field {path} ({hint})"


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """ConfigError naming the first --config.FIELD override of argv that names no field of `config`, or
    whose value does not parse as the field's type (int, float, bool; as ml_collections parses them)."""
    known = field_paths(config)
    for path, value in overrides(argv):
        if path in _sections(config):
            raise ConfigError(f"{path} is a section of the config, not a field: set one of its fields, e.g. "
                              f"--{FLAG}.{next(p for p in known if p.startswith(path + '.'))}=...")
        if path not in known:
            raise ConfigError(unknown_field_message(path, known))
        if value is not None:
            check_value(config, path, value)


def check_value(config: ml_collections.ConfigDict, path: str, value: str) -> None:
    """ConfigError unless `value` parses as the type of field `path` of `config`."""
    section, _, name = path.rpartition(".")
    parent = config
    for part in section.split(".") if section else []:
        parent = parent[part]
    parser, kind = _PARSERS.get(parent.get_type(name), (None, None))
    if parser is None:
        return
    try:
        parser.parse(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config field {path} takes {kind}, not {value!r}") from e


def field_table(config: ml_collections.ConfigDict, spec: str) -> str:
    """--config.help's text: every field of `config` (from the config file `spec`) with its value there
    and its one-line doc, one field a line."""
    docs = field_docs()
    rows = [(path, repr(_value(config, path)), docs.get(path, "(no doc)")) for path in field_paths(config)]
    width = max(len(path) for path, _, _ in rows)
    value_width = min(20, max(len(value) for _, value, _ in rows))
    lines = [f"The fields of --{FLAG}={spec}, their values there and what they do (set one with "
             f"--{FLAG}.FIELD=VALUE; None: the run decides, from the architecture):", ""]
    lines += [f"  {path:<{width}}  {value:<{value_width}}  {doc}" for path, value, doc in rows]
    return "\n".join(lines)


def _value(config: ml_collections.ConfigDict, path: str):
    """The value of the field at dotted `path` of `config`."""
    for part in path.split("."):
        config = config[part]
    return config


def config_lines(config: ml_collections.ConfigDict) -> list[str]:
    """`config` as "field = value" lines, every field in order."""
    return [f"{path} = {_value(config, path)!r}" for path in field_paths(config)]


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name if it has none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def quiet_tool(argv: list[str]) -> None:
    """The start of a small absl tool's main (experiments/plot.py, dashboards.py, ...): UsageError for
    positional arguments, and absl logging at WARNING unless --verbosity is given (Orbax logs every
    restore at INFO)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
