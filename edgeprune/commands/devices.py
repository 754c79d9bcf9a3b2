"""``edgeprune devices``: the device profiles, what they are and where their figures come from."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.cli_util import console, print_json, user_errors, warn
from edgeprune.devices.fingerprint import mismatch_note
from edgeprune.devices.predictor import host_differences
from edgeprune.devices.profiles import list_profiles, load_profile

ORDER = 40


def _err(e: float | None) -> str:
    return f"+-{e:.0%}" if e is not None else "-"


@user_errors
def devices(
    name: Annotated[Optional[str], typer.Argument(help="Show one profile in full (name or TOML path).")] = None,
    json_out: o.Json = False,
) -> None:
    """List device profiles: CPU, cores, clock, threads, providers, RAM, latency source, expected error."""
    if name is not None:
        p = load_profile(name)
        if json_out:
            d = p.summary()
            d.update({"description": p.description, "sources": p.sources,
                      "latency_model": p.latency_model.__dict__ if p.latency_model else None})
            print_json(d)
            return
        console.print(f"[bold]{p.name}[/]  {p.description}", highlight=False)
        for key, val in p.summary().items():
            if key not in ("name", "fingerprint"):
                console.print(f"  {key:16s} {val}", highlight=False)
        if p.sources:
            console.print("  sources:")
            for key, val in p.sources.items():
                console.print(f"    {key}: {val}", highlight=False)
        if p.latency_model:
            lm = p.latency_model
            console.print(f"  latency model: run overhead {lm.run_overhead_us:.1f} us, runtime factor "
                          f"{lm.runtime_factor:g}, NCHWc block {lm.nchwc_block}, cache {lm.cache_mb:g} MB",
                          highlight=False)
            console.print(f"    fitted on: {lm.fitted_on}", highlight=False)
        if p.fingerprint:
            console.print(f"  fitted machine   {p.fingerprint.describe()} ({p.fingerprint.source})", highlight=False)
        elsewhere = host_differences(p)
        if elsewhere:
            warn(mismatch_note(p.name, elsewhere))
        return
    profiles = list_profiles()
    if json_out:
        print_json([p.summary() for p in profiles])
        return
    t = Table(title="Device profiles")
    t.add_column("name", no_wrap=True)
    t.add_column("CPU", no_wrap=True)
    for col in ("cores", "GHz", "threads", "providers", "RAM GB", "latency figures", "error"):
        t.add_column(col, overflow="fold")
    for p in profiles:
        how = p.latency_source.split(";")[0].split(":")[0]
        core = p.cpu.split("(")[0].split(",")[-1].strip() or p.cpu
        t.add_row(p.name, core, str(p.cores), f"{p.clock_ghz:g}", str(p.threads),
                  ", ".join(x.replace("ExecutionProvider", "") for x in p.providers),
                  f"{p.ram_gb:g}", how, _err(p.expected_error))
    console.print(t)
    console.print("Details and sources: edgeprune devices NAME. A profile file of your own can be "
                  "passed by path wherever a device name is accepted.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
