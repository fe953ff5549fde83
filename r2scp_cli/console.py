"""One Rich console and one progress helper for every stage."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=False, highlight=False)
T = TypeVar("T")


@contextmanager
def progress_bar(*extra_fields: str) -> Iterator[Progress]:
    """A progress bar with a count, times, and extra fields (e.g. ``loss``, ``clips_s``).

    Tasks are added with ``bar.add_task(description, total=..., **fields)`` and updated with
    ``bar.update(task, advance=..., field=value)``.
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in extra_fields]
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
