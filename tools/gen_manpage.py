#!/usr/bin/env python3
"""Write the migmanagerd(8) man page, rendered from the CLI's argparse parser.

Run at package build time (debian/rules), so every subcommand and option that
``migmanagerd.cli.main.build_parser()`` knows is documented without anyone
editing roff by hand.  The date comes from SOURCE_DATE_EPOCH when set (dpkg
sets it from debian/changelog), which keeps the build reproducible.

    python3 tools/gen_manpage.py OUTPUT
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_model  # noqa: E402
from cli_model import ENV_NAME, Command, Option, read_cli  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "migmanagerd"

FILES = (
    ("/etc/nvidia-mig-manager/config.yaml",
     "MIG configs in the nvidia-mig-parted \\(lqversion: v1\\(rq format (conffile)."),
    ("/etc/nvidia-mig-manager/hooks.yaml",
     "Hooks run around an apply: apply-start, pre-apply-mode, pre-apply-config, apply-exit (conffile)."),
    ("/etc/nvidia-mig-manager/clients.yaml",
     "GPU client units stopped before and restarted after a MIG change (conffile)."),
    ("/etc/nvidia-mig-manager/integrations.yaml",
     "Optional: the Slurm, CDI and metrics integrations run after each MIG change."),
    ("/etc/systemd/system/nvidia-mig-manager.service.d/override.conf",
     "The selector: sets MIG_PARTED_SELECTED_CONFIG for the unit. "
     "\\fBmigmanagerd select\\fR rewrites it atomically and reloads systemd."),
    ("/etc/nvidia-mig-manager/device-config.yaml",
     "Optional: MIG geometries \\fBrequest\\fR may lay out, in HAMi's knownMigGeometries format; "
     "without it, every maximal layout from the catalog."),
    ("/var/lib/nvidia-mig-manager/leases.json",
     "MIG devices handed out by \\fBrequest\\fR and their owners; \\fBrelease\\fR drops them."),
    ("/var/lib/nvidia-mig-manager/state.json",
     "Last applied config and result, the in-flight journal of stopped clients, the reboot guard."),
    ("/usr/lib/systemd/system/nvidia-mig-manager.service",
     "The oneshot unit that applies the selected config at boot, ordered before nvidia-gpu-reset.target."),
    ("/usr/lib/systemd/system/nvidia-gpu-reset.target",
     "GPU client services (DCGM, nvsm, dcgm-exporter, kubelet, slurmd) order themselves after this target."),
    ("/usr/local/lib/migmanagerd/python",
     "Optional directory searched last for Python modules; the place for nvidia-ml-py, "
     "which Debian does not package (see /usr/share/doc/migmanagerd/packaging.md)."),
)

ENVIRONMENT = {
    "MIG_PARTED_CONFIG_FILE": "Config file used when \\fB\\-f\\fR is not given.",
    "MIG_PARTED_HOOKS_FILE": "Hooks file used when \\fB\\-k\\fR is not given.",
    "MIG_PARTED_SELECTED_CONFIG":
        "Config name used when \\fB\\-c\\fR is not given; the service gets it from override.conf.",
    "MIG_PARTED_DEBUG": "When true (1, true, yes, on), log more, as \\fB\\-d\\fR does.",
    "MIGMANAGERD_GEOMETRIES_FILE": "Allowed geometries file used by \\fBrequest\\fR when \\fB\\-\\-geometries\\fR is not given.",
    "MIGMANAGERD_BACKEND": "GPU backend where no \\fB\\-\\-backend\\fR can be passed: nvml (default) or sim.",
    "MIGMANAGERD_SIM_STATE": "JSON file holding the simulated node of the sim backend.",
    "MIGMANAGERD_SIM_NODE":
        "Shape of the simulated node created when MIGMANAGERD_SIM_STATE does not exist yet, "
        "for example 8xA100-SXM4-40GB.",
    "MIGMANAGERD_SIM_LATENCY":
        "sim backend: per-operation latency in seconds overriding the simulated node's, "
        "for example create_gi=0.2,reset=2.",
    "MIGMANAGERD_SIM_FAULTS":
        "sim backend: fault injection, comma-separated rules OP[@GPU]:N (fail the Nth call) or OP[@GPU]:*.",
    "MIGMANAGERD_NVML_STANDIN":
        "sim: the nvml backend runs through nvidia-ml-py on the simulated node of MIGMANAGERD_SIM_STATE "
        "instead of the NVIDIA driver (the NVML stand-in; docs/nvml-standin.md).",
    "MIGMANAGERD_NVML_STANDIN_STRICT": "NVML stand-in: 1 makes every *count argument the buffer's capacity.",
    "MIGMANAGERD_NVML_STANDIN_BUSY":
        "NVML stand-in: comma-separated GPU indexes whose MIG mode change answers IN_USE (left pending).",
    "MIGMANAGERD_NVIDIA_SMI": "nvidia-smi used by the nvml backend to reset GPUs (default: nvidia-smi on PATH).",
    "MIGMANAGERD_ROOT":
        "Prefix for every node path (/etc, /var/lib, the drop-in, the boot id), so tests and demos "
        "can run the service on a throwaway root.",
    "MIGMANAGERD_STATE_DIR": "State directory instead of /var/lib/nvidia-mig-manager.",
    "MIGMANAGERD_DROPIN":
        "Selector drop-in instead of /etc/systemd/system/nvidia-mig-manager.service.d/override.conf.",
    "MIGMANAGERD_BOOT_ID_FILE": "Boot id file instead of /proc/sys/kernel/random/boot_id (the reboot guard).",
    "MIGMANAGERD_SELECTED_CONFIG": "Set for hooks: the config being applied.",
    "MIGMANAGERD_GPUS": "Set for hooks: the comma-separated indexes of the GPUs the config targets.",
}

EXIT_STATUS = (
    ("0", "Success; for \\fBassert\\fR: the selected config is applied."),
    ("1", "Not applied, or an operation on the node failed."),
    ("2", "Usage or configuration error; nothing on the node was changed."),
)

SEE_ALSO = "systemctl(1), journalctl(1), systemd.service(5), nvidia\\-smi(1)"

SOURCE_ENV = re.compile(r"[\"'](" + ENV_NAME.pattern.replace(r"\b", "") + r")[\"']")


# Characters with no glyph on groff's latin1 or ascii devices (what `man` uses
# in a C or Latin-1 locale): troff warns "can't find special character" and
# drops them. Written as plain ASCII instead. tests/test_manpage.py renders the
# page on every device with -ww.
ASCII_FOR = {
    "\u2026": "...",  # horizontal ellipsis
    "\u00a0": "\\~",  # no-break space: roff's unbreakable space
}


def roff(text: str) -> str:
    """Escape running text for roff: backslashes, and control characters at line starts."""
    text = text.replace("\\", "\\e")
    text = "".join(ASCII_FOR.get(c, c) for c in text)
    # groff reads bytes, not UTF-8, unless run through preconv; name the other
    # non-ASCII characters (dashes, quotes, arrows: every device has those).
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def flag(text: str) -> str:
    return "\\fB" + roff(text).replace("-", "\\-") + "\\fR"


def arg(text: str) -> str:
    return "\\fI" + roff(text).replace("-", "\\-") + "\\fR"


def option_synopsis(opt: Option) -> str:
    if opt.positional:
        core = arg(opt.metavar or opt.dest)
        if opt.repeatable:
            core += " ..."
        return core if opt.required else f"[{core}]"
    core = flag(opt.flags[0])
    if opt.metavar is not None:  # takes a value
        core += " " + arg(opt.metavar)
    return core if opt.required else f"[{core}]"


def option_item(opt: Option) -> list[str]:
    if opt.positional:
        head = arg(opt.metavar or opt.dest)
    else:
        head = ", ".join(flag(f) for f in opt.flags)
        if opt.metavar is not None:  # takes a value
            head += " " + arg(opt.metavar)
    body = roff(opt.help) if opt.help else "(undocumented)"
    if opt.choices and opt.takes_value and "{" not in (opt.metavar or ""):
        body += ("" if body.endswith(".") else ".") + " One of: " + ", ".join(flag(c) for c in opt.choices) + "."
    return [".TP", head, body]


def command_section(cmd: Command) -> list[str]:
    name = " ".join(("migmanagerd",) + cmd.path)
    lines = [f'.SS "{roff(name)}"']
    synopsis = [flag(name)] + [option_synopsis(o) for o in cmd.options if o.dest != "help"]
    if cmd.subcommands:
        synopsis.append(arg("COMMAND") + " ...")
    lines += [".PP", " ".join(synopsis)]
    if cmd.aliases:
        lines += [".PP", "Also called " + ", ".join(flag(a) for a in cmd.aliases) + "."]
    for text in dict.fromkeys(t for t in (cmd.help, cmd.description, cmd.epilog) if t):
        lines += [".PP", roff(text)]
    if cmd.subcommands:
        lines += [".PP", "Commands: " + ", ".join(flag(s.name) for s in cmd.subcommands) + "."]
    for opt in cmd.options:
        if opt.dest != "help":
            lines += option_item(opt)
    return lines


def env_in_source(package_dir: Path = PACKAGE_DIR) -> dict[str, list[str]]:
    """Environment variable names that appear as string literals in the package, by module."""
    found: dict[str, list[str]] = {}
    if not package_dir.is_dir():
        return found
    for path in sorted(package_dir.rglob("*.py")):
        for name in SOURCE_ENV.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, []).append(path.relative_to(package_dir.parent).as_posix())
    return found


def environment_section(root: Command, package_dir: Path = PACKAGE_DIR) -> list[str]:
    # name -> option -> commands whose option defaults to the variable
    used_by: dict[str, dict[str, list[str]]] = {}
    for cmd in root.walk():
        for opt in cmd.options:
            for name in cli_model.ENV_NAME.findall(opt.help):
                label = opt.flags[-1] if opt.flags else opt.dest
                used_by.setdefault(name, {}).setdefault(label, []).append(" ".join(cmd.path) or "migmanagerd")
    in_source = env_in_source(package_dir)
    names = sorted(set(ENVIRONMENT) | set(used_by) | set(in_source))
    lines = [".SH ENVIRONMENT"]
    for name in names:
        text = ENVIRONMENT.get(name)
        if text is None and name in used_by:
            text = "Default of " + "; ".join(
                flag(opt) + " (" + ", ".join(flag(c) for c in cmds) + ")" for opt, cmds in used_by[name].items()
            ) + "."
        elif text is None:
            text = "Read by " + roff(", ".join(dict.fromkeys(in_source[name]))) + "."
        lines += [".TP", flag(name), text]
    return lines


def render_manpage(root: Command, version: str, date: str, package_dir: Path = PACKAGE_DIR) -> str:
    lines = [
        '.\\" Generated by tools/gen_manpage.py from the argparse parser; do not edit.',
        f'.TH MIGMANAGERD 8 "{date}" "migmanagerd {roff(version)}" "System Administration"',
        ".SH NAME",
        "migmanagerd \\- keep the MIG layout of every NVIDIA GPU in a node as the operator selected",
        ".SH SYNOPSIS",
        flag("migmanagerd") + " [" + flag("--version") + "] [" + flag("--help") + "] "
        + arg("COMMAND") + " [" + arg("OPTIONS") + "]",
        ".SH DESCRIPTION",
        roff(root.description),
        ".PP",
        "The unit " + flag("nvidia-mig-manager.service") + " runs " + flag("migmanagerd service")
        + " once at boot: it loads the config file and the selected config name, proves that the "
        "geometry fits every GPU it targets before touching anything, does nothing more when the node "
        "already matches, and otherwise stops the listed GPU clients, switches MIG mode, creates and "
        "destroys only the GPU and compute instances that must change, and restarts the clients it stopped.",
        ".PP",
        "The commands accept the flags and MIG_PARTED_* environment variables of nvidia-mig-parted, "
        "so existing config and hooks files keep working.",
        ".SH OPTIONS",
    ]
    for opt in root.options:
        lines += option_item(opt)
    lines.append(".SH COMMANDS")
    for cmd in root.walk():
        if cmd.path:
            lines += command_section(cmd)
    lines.append(".SH FILES")
    for path, text in FILES:
        lines += [".TP", arg(path), text]
    lines += environment_section(root, package_dir)
    lines.append(".SH EXIT STATUS")
    for code, text in EXIT_STATUS:
        lines += [".TP", flag(code), text]
    lines += [".PP", "Every error message names the file:line, config, GPU index or unit it is about."]
    lines += [".SH SEE ALSO", SEE_ALSO]
    return "\n".join(lines) + "\n"


def build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%d")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the migmanagerd(8) man page.")
    ap.add_argument("output", type=Path, help="file to write (its directory is created)")
    args = ap.parse_args(argv)
    from migmanagerd import __version__

    text = render_manpage(read_cli(), __version__, build_date())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
