"""`synthface recipes [show NAME]`: the recipes shipped inside the package, to run by name or copy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="List the shipped dataset recipes, or print one to copy and edit.", invoke_without_command=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="recipes")


@app.callback()
def list_recipes(ctx: typer.Context) -> None:
    """Each shipped recipe with its one-line description; `synthface run NAME` runs one."""
    if ctx.invoked_subcommand is not None:
        return
    from synthface.recipe import shipped_recipes

    table = Table(title="shipped recipes (synthface run NAME)")
    for column in ("name", "description"):
        table.add_column(column, overflow="fold")
    for recipe in shipped_recipes():
        table.add_row(recipe.name, recipe.description)
    console.print(table)


@app.command()
def show(name: Annotated[str, typer.Argument(help="A shipped recipe's name, e.g. smoke.")]) -> None:
    """Print a shipped recipe exactly as shipped (redirect it to a file to make your own)."""
    from synthface.recipe import shipped_recipe

    # Plain stdout, no rich markup: the bytes must be the recipe's own.
    typer.echo(shipped_recipe(name).path.read_text(encoding="utf-8"), nl=False)
