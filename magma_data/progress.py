"""Terminal output: a progress bar while windows stream in, and the summary table at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


@contextmanager
def progress_bar(total: int, enabled: bool, label: str) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def print_summary(summary) -> None:
    table = Table(title=f"{summary.pipeline} · {summary.source} · config {summary.config_hash}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("windows planned", str(summary.windows_planned))
    table.add_row("rows written", str(summary.rows_written))
    table.add_row("error rows", str(summary.error_rows))
    for name, count in summary.error_classes.items():
        table.add_row(f"  {name}", str(count))
    table.add_row("filtered by the recipe's rules", str(summary.filtered_rows))
    for name, count in summary.filter_rules.items():
        table.add_row(f"  {name}", str(count))
    table.add_row("shards", f"{summary.shards} ({summary.shards_skipped} already committed)")
    table.add_row("tracker", summary.tracker or "-")
    if summary.windows_after_oom:
        table.add_row("  windows in batches halved after out-of-memory", str(summary.windows_after_oom))
    if summary.windows_rerun_alone:
        table.add_row("windows re-run alone after their task was lost", str(summary.windows_rerun_alone))
    table.add_row("wall time", f"{summary.wall_time_s:.1f} s")
    table.add_row("windows per second", f"{summary.windows_per_s:.2f}")
    console.print(table)
